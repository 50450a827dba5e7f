"""Simulated single-cell count data with a known ground truth.

Counts follow a negative binomial (gamma-Poisson) model::

    mu[c, g] = L[c] * p[g] * 2 ** lfc[c, g] * batch_factor[batch[c], g]
    x[c, g] ~ NB(mean=mu[c, g], inverse dispersion=theta[g])      # var = mu + mu**2 / theta

``L`` is a log-normal library size (UMI per cell, shifted per batch), ``p`` a gene's expected
fraction of the library, ``lfc`` the cell type programme (or trajectory) in log2 units and
``batch_factor`` a multiplicative per-gene batch effect. Cells are generated in fixed internal
blocks, each with its own random stream derived from ``seed`` and the block index, so a result
depends only on the arguments, never on ``chunk_size`` or on threading.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.special import ndtri

try:  # anndata >= 0.11
    from anndata.io import sparse_dataset, write_elem
except ImportError:  # pragma: no cover - older anndata
    from anndata.experimental import sparse_dataset, write_elem

__all__ = ["simulate"]

_BRANCH_POINT = 0.3  # pseudotime at which the root splits into two branches
_SEGMENTS = ("root", "branch1", "branch2")
_BLOCK_ENTRIES = 2**22  # cells per internal block = max(16, _BLOCK_ENTRIES // n_genes)


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _fit_template(template):
    """Per-gene library fraction ``p``, inverse dispersion ``theta``, log-library mean/sd."""
    if isinstance(template, (str, os.PathLike)):
        desc, template = str(template), ad.read_h5ad(template)
    elif isinstance(template, ad.AnnData):
        desc = f"AnnData {template.n_obs} x {template.n_vars}"
    else:
        raise ValueError("template must be an AnnData or a path to an .h5ad file of raw counts")
    X = sp.csr_matrix(template.X, dtype=np.float64)
    if X.shape[0] < 2 or X.shape[1] < 1:
        raise ValueError("template needs at least 2 cells and 1 gene")
    if X.data.size and (X.data.min() < 0 or np.any(X.data != np.round(X.data))):
        raise ValueError("template.X must hold raw (non-negative integer) counts")
    lib = np.asarray(X.sum(axis=1)).ravel()
    keep = lib > 0
    if keep.sum() < 2:
        raise ValueError("template needs at least 2 cells with non-zero counts")
    X, lib = X[keep], lib[keep]
    n = X.shape[0]
    p = np.asarray(X.multiply(1.0 / lib[:, None]).sum(axis=0)).ravel() / n  # mean of x / L
    # Method of moments with mu = L * p: sum[(x - mu)^2 - mu] = sum[mu^2] / theta.
    sx2 = np.asarray(X.multiply(X).sum(axis=0)).ravel()
    sxl = np.asarray(X.T @ lib).ravel()
    excess = sx2 - 2 * p * sxl + p**2 * (lib**2).sum() - p * lib.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_theta = excess / (p**2 * (lib**2).sum())
    theta = np.where(inv_theta > 0, 1.0 / np.maximum(inv_theta, 1e-12), 1e3)
    theta = np.clip(np.nan_to_num(theta, nan=1.0), 1e-2, 1e3)
    loglib = np.log(lib)
    names = np.asarray(template.var_names)
    return p, theta, float(loglib.mean()), float(loglib.std()), desc, names


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _block(seed, b, lo, hi, s) -> sp.csr_matrix:
    """Counts for cells ``lo:hi`` (CSR float32, (hi - lo) x n_genes)."""
    rng = _rng(seed, 2, b)
    bt, lib = s["batch"][lo:hi], s["lib"][lo:hi, None]
    if s["traj"] is None:
        mu = s["factor"][bt, s["type"][lo:hi]]  # (cells, genes), float32 gather
    else:
        a0, a1, e = s["traj"]  # log2 anchors: t=0, branch point, branch ends (2, genes)
        t, br = s["t"][lo:hi, None], s["type"][lo:hi]
        root = a0 + (a1 - a0) * _smoothstep(t / _BRANCH_POINT)
        end = e[np.maximum(br - 1, 0)]
        branch = a1 + (end - a1) * _smoothstep((t - _BRANCH_POINT) / (1 - _BRANCH_POINT))
        mu = np.exp2(np.where(br[:, None] == 0, root, branch)).astype(np.float32)
        mu *= s["factor"][bt, 0]
    mu *= lib
    mu /= s["theta32"]  # now the gamma scale mu / theta
    lam = rng.standard_gamma(s["theta32"], size=mu.shape, dtype=np.float32)
    lam *= mu
    del mu
    counts = rng.poisson(lam)
    return sp.csr_matrix(counts, dtype=np.float32)


class _RowBuffer:
    """Growable CSR rows (float32 data, int32 indices) reused across chunks of one write."""

    def __init__(self, n_genes: int, rows_hint: int):
        self.n_genes, self.rows_hint = n_genes, rows_hint
        self.data, self.ind = np.empty(0, np.float32), np.empty(0, np.int32)
        self.nnz, self.ptr = 0, [np.zeros(1, np.int64)]

    def add(self, blk: sp.csr_matrix) -> None:
        end = self.nnz + blk.nnz
        if end > self.data.size:  # size for the expected chunk density, grow by 1.5x after
            dens = blk.nnz / max(blk.shape[0], 1)
            cap = max(end, int(1.1 * dens * self.rows_hint) + 1, int(1.5 * self.data.size))
            for name in ("data", "ind"):
                old = getattr(self, name)
                new = np.empty(cap, old.dtype)
                new[: self.nnz] = old[: self.nnz]
                setattr(self, name, new)
        self.data[self.nnz : end], self.ind[self.nnz : end] = blk.data, blk.indices
        self.ptr.append(blk.indptr[1:].astype(np.int64) + self.nnz)
        self.nnz = end

    def rows(self) -> int:
        return sum(p.size for p in self.ptr) - 1

    def pop(self) -> sp.csr_matrix:
        """The buffered rows (views into the buffer: use before the next ``add``)."""
        ptr = np.concatenate(self.ptr)
        out = sp.csr_matrix(
            (self.data[: self.nnz], self.ind[: self.nnz], ptr), shape=(ptr.size - 1, self.n_genes), copy=False
        )
        out.indptr = ptr  # 64-bit offsets: the file may outgrow 2**31 entries
        self.nnz, self.ptr = 0, [np.zeros(1, np.int64)]
        return out


def _iter_blocks(seed, n_cells, size, s, n_threads=2):
    """Yield consecutive CSR blocks in order; at most ``2 * n_threads`` blocks in flight."""
    starts = range(0, n_cells, size)
    with ThreadPoolExecutor(n_threads) as pool:
        todo = deque()
        for b, lo in enumerate(starts):
            todo.append(pool.submit(_block, seed, b, lo, min(lo + size, n_cells), s))
            if len(todo) >= 2 * n_threads:
                yield todo.popleft().result()
        while todo:
            yield todo.popleft().result()


def simulate(
    n_cells: int = 5000,
    n_genes: int = 2000,
    n_batches: int = 3,
    n_cell_types: int = 5,
    trajectory: bool = False,
    seed: int = 0,
    template=None,
    path=None,
    chunk_size: int = 100_000,
    *,
    batch_effect: float = 0.3,
    batch_library_shift: float = 0.2,
    de_fraction: float = 0.1,
    de_lfc: float = 2.0,
    up_fraction: float = 0.5,
    library_median: float = 2500.0,
    library_log_sd: float = 0.5,
    mean_log_sd: float = 3.0,
    dispersion: float = 0.7,
    dispersion_log_sd: float = 0.5,
):
    """Simulate UMI counts (cells x genes) with batches, cell types or a trajectory.

    Parameters
    ----------
    n_cells, n_genes
        Matrix shape. At the defaults about 88% of entries are zero, median library ~2,500 UMI.
    n_batches
        Batches ``"batch0"``, ... (uniform). Each gets a per-gene multiplicative factor
        ``exp(N(0, batch_effect))`` and a library shift ``exp(N(0, batch_library_shift))``.
    n_cell_types
        Cell types ``"type0"``, ... (uniform). In each, a fraction ``de_fraction`` of genes is
        differentially expressed vs the baseline: up with probability ``up_fraction``, with
        ``|log2 fold change| ~ Gamma(4, de_lfc / 4)`` (mean ``de_lfc``). Ignored if ``trajectory``.
    trajectory
        If True, cells lie on a branching trajectory: pseudotime ``t ~ U(0, 1)``; ``t < 0.3`` is
        the ``"root"``, later cells go to ``"branch1"`` or ``"branch2"`` (50/50). A fraction
        ``de_fraction`` of genes is dynamic: its log2 factor moves smoothly (smoothstep, C1) from
        an anchor at t=0 to one at the branch point and on to a branch-specific end value
        (anchors ~ N(0, de_lfc)). ``obs["cell_type"]`` is then the segment (= ``obs["branch"]``).
    seed
        Non-negative integer; same arguments and seed give identical data.
    template
        AnnData of raw counts in ``X`` (or a path to an .h5ad). Replaces the default gene
        parameters and library size with ones fitted to it: ``p[g]`` = mean over cells of
        ``x[c, g] / L[c]``; ``theta[g]`` by method of moments under ``mu = L * p`` (clipped to
        [0.01, 1000]; under-dispersed genes get 1000); ``log L ~ N(mean, sd)`` of the template's
        log library sizes. If ``n_genes`` differs from the template's, genes are drawn without
        replacement (fewer) or recycled through repeated random permutations (more); per-gene
        means are kept, so library sizes scale with ``n_genes / template.n_vars``.
        ``var["template_gene"]`` names the source gene. ``library_median``, ``library_log_sd``,
        ``mean_log_sd``, ``dispersion`` and ``dispersion_log_sd`` are then unused.
    path
        If given (``.h5ad``), the result is written there chunk by chunk (peak memory bounded
        by ``chunk_size``, not ``n_cells``) and the path is returned instead of an AnnData.
    chunk_size
        Cells buffered per append when ``path`` is given. The data do not depend on it: cells
        are drawn in internal blocks of ``max(16, 2**22 // n_genes)`` cells, each with its own
        random stream (``SeedSequence(seed, spawn_key=(2, block))``), on 2 threads.
    batch_effect, batch_library_shift
        SD of the natural-log per-gene batch factor / per-batch log library shift.
    de_fraction, de_lfc, up_fraction
        Fraction of DE (dynamic) genes per type, mean absolute log2 fold change, share of ups.
    library_median, library_log_sd
        Median (UMI) and SD (natural log) of the log-normal library size.
    mean_log_sd
        SD of natural-log gene means (quantiles of a normal, so sparsity is stable across seeds).
    dispersion, dispersion_log_sd
        Median and natural-log SD of the NB inverse dispersion ``theta`` (log-normal over genes).

    Returns
    -------
    AnnData (or the ``path``) with ``X``: CSR float32 integer counts, shape (n_cells, n_genes);
    ``obs``: ``batch``, ``cell_type`` (categorical), ``library_size_true`` (expected UMI with a
    baseline profile), and with ``trajectory`` ``pseudotime`` (in [0, 1]) and ``branch``;
    ``var``: ``true_mean`` (p, library fraction), ``true_theta``, ``batch_factor_<batch>``,
    ``de_lfc_<type>`` (true log2 fold change of the type vs baseline, 0 = not DE; for a
    trajectory the segment-average log2 factor), ``de_type`` (comma-separated DE types) and
    ``is_de``; with ``trajectory`` also the log2 anchors ``traj_lfc_start``,
    ``traj_lfc_branch_point``, ``traj_lfc_end_branch1/2``; ``uns["simulation"]``: the arguments
    and fitted values (JSON-able).
    """
    ints = [
        ("n_cells", n_cells, 1),
        ("n_genes", n_genes, 1),
        ("n_batches", n_batches, 1),
        ("n_cell_types", n_cell_types, 1),
        ("chunk_size", chunk_size, 1),
        ("seed", seed, 0),
    ]
    for name, v, lo in ints:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    checks = [
        (batch_effect, "batch_effect", 0),
        (batch_library_shift, "batch_library_shift", 0),
        (de_lfc, "de_lfc", 0),
        (library_log_sd, "library_log_sd", 0),
        (mean_log_sd, "mean_log_sd", 0),
        (dispersion_log_sd, "dispersion_log_sd", 0),
        (library_median, "library_median", 1),
        (dispersion, "dispersion", 1),
        (de_fraction, "de_fraction", 2),
        (up_fraction, "up_fraction", 2),
    ]
    rule = [">= 0", "> 0", "in [0, 1]"]
    for v, name, kind in checks:
        ok = np.isfinite(v) and (v >= 0, v > 0, 0 <= v <= 1)[kind]
        if not ok:
            raise ValueError(f"{name} must be finite and {rule[kind]}, got {v!r}")
    if path is not None and not str(path).endswith(".h5ad"):
        raise ValueError(f"path must end with .h5ad, got {str(path)!r}")
    n_cells, n_genes, n_batches, seed = int(n_cells), int(n_genes), int(n_batches), int(seed)

    rg = _rng(seed, 0)  # gene-level parameters
    info = {}
    if template is None:
        z = ndtri((rg.permutation(n_genes) + 0.5) / n_genes) * mean_log_sd
        p = np.exp(z) / np.exp(z).sum()
        theta = dispersion * np.exp(rg.normal(0.0, dispersion_log_sd, n_genes))
        loglib_mean, loglib_sd, src = float(np.log(library_median)), float(library_log_sd), None
    else:
        tp, tt, loglib_mean, loglib_sd, desc, tnames = _fit_template(template)
        gt = tp.size
        reps = -(-n_genes // gt)
        idx = np.concatenate([rg.permutation(gt) for _ in range(reps)])[:n_genes]
        p, theta, src = tp[idx], tt[idx], idx
        info = dict(template=desc, template_loglib_mean=loglib_mean, template_loglib_sd=loglib_sd)
    batch_log = rg.normal(0.0, batch_effect, (n_batches, n_genes))
    lib_shift = rg.normal(0.0, batch_library_shift, n_batches)
    lib_shift -= lib_shift.mean()  # batches differ, the overall median stays library_median

    def programme(k):  # (k, genes) log2 fold changes, zero outside the DE genes
        de = rg.random((k, n_genes)) < de_fraction
        sign = np.where(rg.random((k, n_genes)) < up_fraction, 1.0, -1.0)
        return de * sign * rg.gamma(4.0, de_lfc / 4.0, (k, n_genes))

    rc = _rng(seed, 1)  # cell-level metadata, drawn at once (a few numbers per cell)
    batch = rc.integers(0, n_batches, n_cells)
    lib = np.exp(rc.normal(loglib_mean, loglib_sd, n_cells) + lib_shift[batch])
    var = pd.DataFrame(index=pd.Index([f"gene{i}" for i in range(n_genes)]))
    var["true_mean"], var["true_theta"] = p, theta
    if src is not None:
        var["template_gene"] = tnames[src]
    for j in range(n_batches):
        var[f"batch_factor_batch{j}"] = np.exp(batch_log[j])
    s = dict(batch=batch, lib=lib, theta32=theta.astype(np.float32), traj=None)
    gene_factor = p * np.exp(batch_log)  # (batches, genes)
    if trajectory:
        dyn = rg.random(n_genes) < de_fraction
        anchors = np.where(dyn, rg.normal(0.0, de_lfc, (4, n_genes)), 0.0)
        a0, a1, e = anchors[0], anchors[1], anchors[2:]
        t = rc.random(n_cells)
        seg = np.where(t < _BRANCH_POINT, 0, 1 + (rc.random(n_cells) < 0.5))
        s.update(traj=(a0, a1, e), t=t, type=seg, factor=gene_factor[:, None].astype(np.float32))
        names, lfc = list(_SEGMENTS), np.stack([(a0 + a1) / 2, (a1 + e[0]) / 2, (a1 + e[1]) / 2])
        for key, v in zip(["start", "branch_point", "end_branch1", "end_branch2"], anchors):
            var[f"traj_lfc_{key}"] = v
        de_mask = np.broadcast_to(dyn, lfc.shape)
    else:
        lfc = programme(n_cell_types)
        names = [f"type{k}" for k in range(n_cell_types)]
        s.update(
            type=rc.integers(0, n_cell_types, n_cells),
            factor=(gene_factor[:, None] * np.exp2(lfc)[None]).astype(np.float32),
        )
        de_mask = lfc != 0
    for k, name in enumerate(names):
        var[f"de_lfc_{name}"] = lfc[k]
    var["de_type"] = [",".join(n for n, m in zip(names, col) if m) for col in de_mask.T]
    var["is_de"] = de_mask.any(axis=0)

    obs = pd.DataFrame(index=pd.Index([f"cell{i}" for i in range(n_cells)]))
    obs["batch"] = pd.Categorical.from_codes(batch, [f"batch{j}" for j in range(n_batches)])
    obs["cell_type"] = pd.Categorical.from_codes(s["type"], names)
    obs["library_size_true"] = lib * p.sum()
    if trajectory:
        obs["pseudotime"], obs["branch"] = s["t"], obs["cell_type"].copy()
    params = dict(
        n_cells=n_cells,
        n_genes=n_genes,
        n_batches=n_batches,
        n_cell_types=len(names),
        trajectory=bool(trajectory),
        seed=seed,
        batch_effect=float(batch_effect),
        batch_library_shift=float(batch_library_shift),
        de_fraction=float(de_fraction),
        de_lfc=float(de_lfc),
        up_fraction=float(up_fraction),
        library_median=float(np.exp(loglib_mean)),
        library_log_sd=loglib_sd,
        mean_log_sd=float(mean_log_sd),
        dispersion=float(dispersion),
        dispersion_log_sd=float(dispersion_log_sd),
        lfc_units="log2",
        branch_point=_BRANCH_POINT if trajectory else -1.0,
        batch_library_shifts=[float(x) for x in lib_shift],
        **info,
    )
    size = max(16, _BLOCK_ENTRIES // n_genes)  # internal block (cells); fixed by n_genes only
    if path is None:
        X = sp.vstack(list(_iter_blocks(seed, n_cells, size, s)), format="csr")
        return ad.AnnData(X=X, obs=obs, var=var, uns={"simulation": params})

    import h5py

    ad.AnnData(obs=obs, var=var, uns={"simulation": params}).write_h5ad(path)
    with h5py.File(path, "a") as f:
        disk, buf = None, _RowBuffer(n_genes, min(chunk_size, n_cells))
        for i, blk in enumerate(_iter_blocks(seed, n_cells, size, s)):
            buf.add(blk)
            if buf.rows() >= chunk_size or (i + 1) * size >= n_cells:
                chunk = buf.pop()
                if disk is None:
                    write_elem(f, "X", chunk)
                    disk = sparse_dataset(f["X"])
                else:
                    disk.append(chunk)
    return path
