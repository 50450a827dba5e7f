"""Differential expression for a trained model: choosing the cell groups from ``adata.obs``, drawing
posterior samples of normalized expression through the module, and tabulating the statistics of
:mod:`cellvi.analysis.differential`. Used by :meth:`cellvi.model.SCVI.differential_expression`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .._settings import settings
from ..analysis import differential as de
from ..errors import InvalidParameterError, MissingKeyError

MODES = ("vanilla", "change")
THRESHOLD_COUNTS = 0.01  # a gene with a lower raw mean in a group is "not expressed" there (pseudocount)


@dataclass
class Comparison:
    """One test: cells of ``mask1`` against cells of ``mask2`` (None: every other cell)."""

    name1: object
    name2: object
    k1: int  # row of mask1 in the count sums
    k2: int | None
    labelled: bool  # add the comparison / group1 / group2 columns


@dataclass(frozen=True)
class DERequest:
    """The arguments of :meth:`cellvi.model.SCVI.differential_expression` (documented there), as
    one value that both DE paths take."""

    groupby: str | None = None
    group1: object = None
    group2: object = None
    idx1: object = None
    idx2: object = None
    mode: str = "vanilla"
    delta: float | None = 0.25
    batch_size: int | None = None
    all_stats: bool = True
    batch_correction: bool = False
    fdr_target: float = 0.05
    n_samples: int = 5000
    pseudocounts: float | None = None
    test_mode: str = "three"
    mc_error: float | None = 0.01  # Monte-Carlo standard error at which a comparison stops
    weights: str | None = "uniform"
    filter_outlier_cells: bool = False
    importance_weighting_kwargs: dict | None = None


def _as_mask(idx, obs: pd.DataFrame, name: str) -> np.ndarray:
    """A boolean (n_obs,) mask from a mask, integer positions or an ``obs.query`` string."""
    n = len(obs)
    if isinstance(idx, str):
        try:
            return obs.index.isin(obs.query(idx).index)
        except Exception as exc:  # pandas raises many types for a bad query
            raise InvalidParameterError(f"{name}={idx!r} is not a valid adata.obs query: {exc}") from exc
    arr = np.asarray(idx).ravel()
    if arr.dtype == bool:
        if len(arr) != n:
            raise InvalidParameterError(f"{name} is a boolean mask of length {len(arr)}; adata has {n} cells.")
        return arr
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise InvalidParameterError(f"{name} must be a boolean mask, integer positions or a query string.")
    mask = np.zeros(n, dtype=bool)
    mask[arr.astype(np.int64)] = True
    return mask


def plan_comparisons(obs: pd.DataFrame, groupby, group1, group2, idx1, idx2):
    """Resolve the arguments into (masks, comparisons). Raises on unknown columns or groups."""
    if idx1 is not None:
        masks = [_as_mask(idx1, obs, "idx1")]
        if idx2 is not None:
            masks.append(_as_mask(idx2, obs, "idx2"))
        if not masks[0].any() or (idx2 is not None and not masks[1].any()):
            raise InvalidParameterError("idx1 or idx2 selects no cell.")
        return masks, [
            Comparison("idx1", "idx2" if idx2 is not None else "Rest", 0, 1 if idx2 is not None else None, False)
        ]
    if groupby is None:
        raise InvalidParameterError("Pass groupby (an adata.obs column) or idx1.")
    if groupby not in obs.columns:
        raise MissingKeyError(f"groupby {groupby!r} is not a column of adata.obs; columns: {list(obs.columns)}.")
    col = pd.Categorical(obs[groupby]).remove_unused_categories()
    names = {str(c): c for c in col.categories}
    codes = np.asarray(col.codes)
    if group1 is None:
        group1 = [g for g in col.categories if group2 is None or str(g) != str(group2)]
        if len(col.categories) < 2:
            raise InvalidParameterError(f"adata.obs[{groupby!r}] has a single group; nothing to compare.")
    elif isinstance(group1, str) or not np.iterable(group1):
        group1 = [group1]
    wanted = list(group1) + ([] if group2 is None else [group2])
    unknown = [g for g in wanted if str(g) not in names]
    if unknown:
        raise MissingKeyError(f"Groups {unknown} are not in adata.obs[{groupby!r}]; groups: {list(names)}.")
    order = list(dict.fromkeys(str(g) for g in wanted))
    masks = [codes == list(names).index(g) for g in order]
    k2 = None if group2 is None else order.index(str(group2))
    comps = [Comparison(g, "Rest" if group2 is None else group2, order.index(str(g)), k2, True) for g in group1]
    return masks, comps


def scale_samples(model, adata, cells: np.ndarray, codes: list, batch_size, out=None) -> np.ndarray:
    """One posterior sample of normalized expression per cell of ``cells`` (sorted, distinct),
    averaged over the batch codes ``codes`` ([None]: each cell in its own batch). (n, n_genes);
    written into ``out`` when given (float32, C-contiguous, (n, n_genes)): on the CPU with one code
    the softmax goes there directly, without a copy."""
    if out is None:
        out = np.empty((len(cells), model.module.n_input), dtype=np.float32)
    in_place = len(codes) == 1 and model.device.type == "cpu"
    pos = 0
    with torch.no_grad():  # sparse counts: the encoder's first layer multiplies the non-zeros only
        for batch in model._batches(adata, cells, batch_size, sparse_counts=True):
            n = len(batch["batch"])
            if in_place:
                model.module.expression(batch, codes[0], sample_z=True, out=torch.from_numpy(out[pos : pos + n]))
            else:
                acc = sum(model.module.expression(batch, code, sample_z=True) for code in codes) / len(codes)
                out[pos : pos + n] = acc.cpu().numpy()
            pos += n
    return out


def group_samples(model, adata, pool, n_samples, codes, batch_size, rng) -> np.ndarray:
    """``n_samples`` posterior samples of random cells of ``pool``, in random order."""
    passes = de.cell_passes(pool, n_samples, rng)
    samples = np.concatenate([scale_samples(model, adata, cells, codes, batch_size) for cells in passes])
    return de.pick_rows(samples, n_samples, rng)


def _check(r: DERequest) -> None:
    if r.mode not in MODES:
        raise InvalidParameterError(f"mode must be one of {list(MODES)}, got {r.mode!r}.")
    if r.test_mode not in ("two", "three"):
        raise InvalidParameterError(f"test_mode must be 'two' or 'three', got {r.test_mode!r}.")
    if r.delta is not None and not r.delta >= 0:
        raise InvalidParameterError(f"delta must be >= 0 or None, got {r.delta!r}.")
    if not isinstance(r.n_samples, (int, np.integer)) or r.n_samples < 2:
        raise InvalidParameterError(f"n_samples must be an integer >= 2, got {r.n_samples!r}.")
    if r.mc_error is not None and not r.mc_error > 0:
        raise InvalidParameterError(f"mc_error must be > 0 or None, got {r.mc_error!r}.")


def _prepare(model, adata, r: DERequest):
    """(AnnData, masks, comparisons, count sums or None, gene names)."""
    ad = model.adata if adata is None else adata
    data = model._cell_data(adata)  # checks genes and categories of a new adata
    masks, comps = plan_comparisons(ad.obs, r.groupby, r.group1, r.group2, r.idx1, r.idx2)
    need_sums = r.all_stats or (r.mode == "change" and r.pseudocounts is None)
    sums = de.group_count_sums(data.X, masks) if need_sums else None
    for comp in comps:
        n2 = (~masks[comp.k1]).sum() if comp.k2 is None else masks[comp.k2].sum()
        if not masks[comp.k1].any() or n2 == 0:
            raise InvalidParameterError(f"{comp.name1!r} vs {comp.name2!r}: a group has no cells.")
    return ad, masks, comps, sums, pd.Index(model.registry.var_names)


def _thresholds(s1, s2, stats, r: DERequest):
    """The pseudocount and delta of the change test, estimated from samples where not given."""
    eps = r.pseudocounts
    if eps is None:
        eps = de.estimate_pseudocount(
            s1, s2, stats["raw_mean1"] < THRESHOLD_COUNTS, stats["raw_mean2"] < THRESHOLD_COUNTS
        )
    d = r.delta
    if d is None:  # data-driven threshold from a first pass at delta 0
        d = de.estimate_delta(de.change_test(s1, s2, 0.0, eps, r.test_mode)["lfc_mean"])
    return eps, d


def _table(res, stats, comp, r: DERequest, genes, eps=None, d=None) -> pd.DataFrame:
    mode, fdr_target = r.mode, r.fdr_target
    if mode == "change":
        res = {
            **{k: res[k] for k in ("proba_de", "proba_not_de", "bayes_factor", "scale1", "scale2")},
            "pseudocounts": eps,
            "delta": d,
            **{
                k: v
                for k, v in res.items()
                if k not in ("proba_de", "proba_not_de", "bayes_factor", "scale1", "scale2")
            },
        }
    table = pd.DataFrame({**res, **(stats if r.all_stats else {})}, index=genes)
    table = table.sort_values("proba_de" if mode == "change" else "bayes_factor", ascending=False, kind="stable")
    if mode == "change":
        table[f"is_de_fdr_{fdr_target}"] = de.fdr_calls(table["proba_de"].to_numpy(), fdr_target)
    if comp.labelled:
        table["comparison"] = f"{comp.name1} vs {comp.name2}"
        table["group1"] = comp.name1
        table["group2"] = comp.name2
    return table


def differential_expression_per_comparison(model, adata, r: DERequest) -> pd.DataFrame:
    """The reference path: for each comparison in turn, ``r.n_samples`` fresh posterior samples of
    each side, tested at once (``mc_error``, ``weights`` and ``filter_outlier_cells`` are not used).
    What :func:`differential_expression` is tested against; its results are what cellvi returned
    before the shared, round-based path."""
    _check(r)
    ad, masks, comps, sums, genes = _prepare(model, adata, r)
    codes = list(range(len(model.registry.categories["batch"]))) if r.batch_correction else [None]
    rng = settings.new_generator(offset=7)
    everyone = np.arange(ad.n_obs)
    results = []
    for comp in comps:
        in1 = masks[comp.k1]
        pool2 = everyone[~in1] if comp.k2 is None else everyone[masks[comp.k2]]
        s1 = group_samples(model, adata, everyone[in1], r.n_samples, codes, r.batch_size, rng)
        s2 = group_samples(model, adata, pool2, r.n_samples, codes, r.batch_size, rng)
        stats = de.raw_stats(sums, comp.k1, comp.k2) if sums is not None else {}
        if r.mode == "vanilla":
            results.append(_table(de.vanilla_test(s1, s2), stats, comp, r, genes))
            continue
        eps, d = _thresholds(s1, s2, stats, r)
        res = de.change_test(s1, s2, d, eps, r.test_mode)
        results.append(_table(res, stats, comp, r, genes, eps, d))
    return pd.concat(results, axis=0)


FIRST_ROUND = 1000  # pairs per comparison in the first round (thresholds, lfc_median come from it)
NEXT_ROUND = 500  # pairs per comparison in each further round, until converged or n_samples
ROUND_BYTES = 512 * 2**20  # a round's samples, all cell groups together, and one test's arrays
WORK_ARRAYS = 6  # (r, n_genes) float32 arrays a comparison's test holds at once besides the pool
# scvi-tools' get_importance_weights defaults (n_mc_samples_per_pass is accepted and has no effect)
IMPORTANCE_DEFAULTS = {"max_cells": 1024, "truncation": False, "n_mc_samples": 500, "n_mc_samples_per_pass": 250}


def importance_options(model, weights, batch_correction, kwargs) -> dict | None:
    """The importance-weighting options (None for ``weights="uniform"``), checked."""
    if weights in (None, "uniform"):
        if kwargs:
            raise InvalidParameterError("importance_weighting_kwargs need weights='importance'.")
        return None
    if weights != "importance":
        raise InvalidParameterError(f"weights must be 'uniform' or 'importance', got {weights!r}.")
    if batch_correction:
        raise InvalidParameterError(
            "weights='importance' cannot be combined with batch_correction=True (as in scvi-tools: a "
            "sample averaged over batches has no single likelihood to weight)."
        )
    if model.module.latent_distribution != "normal":
        raise InvalidParameterError("weights='importance' needs latent_distribution='normal' (a normal prior).")
    unknown = set(kwargs or {}) - set(IMPORTANCE_DEFAULTS)
    if unknown:
        raise InvalidParameterError(
            f"Unknown importance_weighting_kwargs {sorted(unknown)}; accepted: {list(IMPORTANCE_DEFAULTS)}."
        )
    opts = {**IMPORTANCE_DEFAULTS, **(kwargs or {})}
    for key in ("max_cells", "n_mc_samples"):
        if not isinstance(opts[key], (int, np.integer)) or opts[key] < 1:
            raise InvalidParameterError(f"importance_weighting_kwargs[{key!r}] must be a positive integer.")
    return opts


def inliers(model, adata, masks: list[np.ndarray], batch_size) -> np.ndarray:
    """``filter_outlier_cells``: (n_cells,) bool, False for the cells that are outliers of the latent
    means of a group they belong to (each group, and the cells in none, checked on its own)."""
    batches = model._batches(adata, None, batch_size, sparse_counts=True)
    latent = np.concatenate([model.module.latent(b).cpu().numpy() for b in batches])
    keep = np.ones(len(latent), dtype=bool)
    for m in [*masks, ~np.any(masks, axis=0)]:
        cells = np.flatnonzero(m)
        if len(cells) == 0:
            continue
        ok = de.inlier_mask(latent[cells])
        if ok is not None:
            keep[cells[~ok]] = False
    return keep


def differential_expression(model, adata, r: DERequest) -> pd.DataFrame:
    """See :meth:`cellvi.model.SCVI.differential_expression`. All comparisons share each round's
    posterior samples (:class:`~cellvi.model._de_pools.AtomPools`); a comparison stops when its
    :meth:`~cellvi.analysis.differential.PairTally.converged` at ``r.mc_error`` (None: after
    ``r.n_samples`` pairs), and in any case after ``r.n_samples`` pairs. ``weights="importance"``:
    each group's samples are resampled by importance weight (:mod:`cellvi.module.importance`);
    ``filter_outlier_cells``: sample no cell that is a latent outlier of its group (:func:`inliers`;
    the raw-count columns still cover every cell)."""
    from ._de_pools import AtomPools

    _check(r)
    importance = importance_options(model, r.weights, r.batch_correction, r.importance_weighting_kwargs)
    _, masks, comps, sums, genes = _prepare(model, adata, r)
    codes = list(range(len(model.registry.categories["batch"]))) if r.batch_correction else [None]
    keep = inliers(model, adata, masks, r.batch_size) if r.filter_outlier_cells else None
    if keep is not None and any(not (m & keep).any() for m in masks):
        raise InvalidParameterError("filter_outlier_cells=True left a group without cells.")
    pools = AtomPools(masks, settings.new_generator(offset=7), keep=keep, importance=importance)
    n_genes = model.module.n_input
    stats = [de.raw_stats(sums, c.k1, c.k2) if sums is not None else {} for c in comps]
    tallies: list[de.PairTally | None] = [None] * len(comps)
    thresholds = [(None, None)] * len(comps)
    active = list(range(len(comps)))
    while active:
        needed = np.zeros(len(pools.sizes), dtype=bool)
        for i in active:
            needed |= pools.atoms_of(comps[i], 1) | pools.atoms_of(comps[i], 2)
        needed &= pools.sizes > 0
        done = 0 if tallies[active[0]] is None else tallies[active[0]].n
        # the round's pool plus one comparison's working arrays (two sides, ratio, work, median copies)
        cap = max(16, ROUND_BYTES // (4 * n_genes * (int(needed.sum()) + WORK_ARRAYS)))
        step = (FIRST_ROUND if done == 0 else NEXT_ROUND) if r.mc_error is not None else r.n_samples
        size = min(r.n_samples - done, cap, step)
        pools.draw(model, adata, needed, size, codes, r.batch_size)
        for i in active:
            s1, s2 = pools.pairs(comps[i], size)
            if tallies[i] is None:
                if r.mode == "change":
                    thresholds[i] = _thresholds(s1, s2, stats[i], r)
                eps, d = thresholds[i]
                tallies[i] = de.PairTally(r.mode, n_genes, d or 0.0, eps or 0.0, r.test_mode)
            tallies[i].add(s1, s2)
        active = [
            i
            for i in active
            if tallies[i].n < r.n_samples and not (r.mc_error is not None and tallies[i].converged(r.mc_error))
        ]
    results = []
    for i, comp in enumerate(comps):
        res = {**tallies[i].result(), "mc_error": tallies[i].mc_error(), "n_pairs": tallies[i].n}
        results.append(_table(res, stats[i], comp, r, genes, *thresholds[i]))
    return pd.concat(results, axis=0)
