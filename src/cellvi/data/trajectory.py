"""A branching trajectory with a known answer: a root population that splits into two lineages.

Each cell has a true time ``t ~ U(0, 1)``. Cells with ``t < branch_point`` are the root; later cells
belong to ``branch1`` or ``branch2`` (50/50). A fraction ``dynamic_fraction`` of genes changes along
the path: its log2 expression factor is piecewise linear in ``t`` through anchors drawn from
``N(0, lfc_sd)`` at t = 0, at the branch point, and, per branch, half-way to the end and at t = 1.
The branches leave the branch point in different directions at once (linear, not eased), so the two
lineages separate as soon as they start. Counts are negative binomial as in :func:`simulate`::

    mu[c, g] = L[c] * p[g] * 2 ** f_g(t[c], branch[c]) * batch_factor[batch[c], g]

Cell types are the stages of the tree, ``root``, ``branch1_early``, ``branch1_late``,
``branch2_early``, ``branch2_late`` (early/late split half-way along a branch), so the true lineage
tree over cell types has the edges :data:`TRUE_TREE`.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.special import ndtri

from .simulate import _rng, _RowBuffer, sparse_dataset, write_elem

__all__ = ["STAGES", "TRUE_TREE", "simulate_trajectory"]

STAGES = ("root", "branch1_early", "branch1_late", "branch2_early", "branch2_late")
#: Edges of the true lineage tree over the stages (cell types).
TRUE_TREE = (
    ("root", "branch1_early"),
    ("root", "branch2_early"),
    ("branch1_early", "branch1_late"),
    ("branch2_early", "branch2_late"),
)
_BLOCK_CELLS = 4096  # cells per random stream; the data do not depend on chunk_size


def _log2_factor(t: np.ndarray, branch: np.ndarray, anchors: np.ndarray, bp: float) -> np.ndarray:
    """(cells, genes) log2 factor. anchors: (6, genes) at t=0, t=bp, mid/end of branch 1, mid/end of
    branch 2; branch: 0 root, 1 or 2."""
    t = t[:, None]
    mid = (1.0 + bp) / 2
    root = anchors[0] + (anchors[1] - anchors[0]) * np.clip(t / bp, 0, 1)
    out = root
    for k in (1, 2):
        m, e = anchors[2 * k], anchors[2 * k + 1]
        first = anchors[1] + (m - anchors[1]) * np.clip((t - bp) / (mid - bp), 0, 1)
        later = m + (e - m) * np.clip((t - mid) / (1 - mid), 0, 1)
        out = np.where((branch[:, None] == k), np.where(t < mid, first, later), out)
    return out


def simulate_trajectory(
    n_cells: int = 5000,
    n_genes: int = 2000,
    n_batches: int = 3,
    seed: int = 0,
    path=None,
    chunk_size: int = 100_000,
    *,
    branch_point: float = 0.3,
    dynamic_fraction: float = 0.3,
    lfc_sd: float = 2.0,
    batch_effect: float = 0.3,
    batch_library_shift: float = 0.2,
    library_median: float = 2500.0,
    library_log_sd: float = 0.4,
    mean_log_sd: float = 1.5,
    dispersion: float = 5.0,
):
    """Simulate UMI counts on a branching trajectory, with batches and cell-type (stage) labels.

    Parameters
    ----------
    n_cells, n_genes, n_batches
        Shape of the count matrix and number of batches (``"batch0"``, ...; uniform).
    seed
        Non-negative integer; same arguments give identical data.
    path
        If given (``.h5ad``), counts are written there in chunks of ``chunk_size`` cells (memory does
        not grow with ``n_cells``) and the path is returned.
    branch_point
        True time at which the root splits, in (0, 1).
    dynamic_fraction, lfc_sd
        Share of genes that change along the trajectory; SD of their log2 anchors.
    batch_effect, batch_library_shift
        SD (natural log) of the per-gene batch factor and of the per-batch library shift.
    library_median, library_log_sd
        Median UMI per cell and SD of its natural log.
    mean_log_sd, dispersion
        SD of natural-log gene means; NB inverse dispersion ``theta`` (same for every gene).

    Returns
    -------
    AnnData (or ``path``): ``X`` CSR float32 counts (n_cells, n_genes); ``obs``: ``batch``,
    ``time`` (true time in [0, 1]), ``branch`` (``root``/``branch1``/``branch2``), ``cell_type``
    (the stage, see :data:`STAGES`); ``var``: ``true_mean``, ``is_dynamic``, the log2 anchors
    ``traj_lfc_*`` and ``batch_factor_<batch>``; ``uns["simulation"]``: the arguments and
    ``uns["true_tree"]``: the edges of :data:`TRUE_TREE`.
    """
    for name, v, lo in [
        ("n_cells", n_cells, 1),
        ("n_genes", n_genes, 1),
        ("n_batches", n_batches, 1),
        ("seed", seed, 0),
        ("chunk_size", chunk_size, 1),
    ]:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    if not 0 < branch_point < 1:
        raise ValueError(f"branch_point must be in (0, 1), got {branch_point!r}")
    if not 0 <= dynamic_fraction <= 1:
        raise ValueError(f"dynamic_fraction must be in [0, 1], got {dynamic_fraction!r}")
    if path is not None and not str(path).endswith(".h5ad"):
        raise ValueError(f"path must end with .h5ad, got {str(path)!r}")
    rg, rc = _rng(seed, 10), _rng(seed, 11)  # genes, cells
    z = ndtri((rg.permutation(n_genes) + 0.5) / n_genes) * mean_log_sd
    p = np.exp(z) / np.exp(z).sum()
    dynamic = rg.random(n_genes) < dynamic_fraction
    anchors = np.where(dynamic, rg.normal(0.0, lfc_sd, (6, n_genes)), 0.0)
    batch_log = rg.normal(0.0, batch_effect, (n_batches, n_genes))
    lib_shift = rg.normal(0.0, batch_library_shift, n_batches)
    lib_shift -= lib_shift.mean()

    t = rc.random(n_cells)
    branch = np.where(t < branch_point, 0, 1 + (rc.random(n_cells) < 0.5))
    batch = rc.integers(0, n_batches, n_cells)
    lib = np.exp(rc.normal(np.log(library_median), library_log_sd, n_cells) + lib_shift[batch])
    late = t >= (1 + branch_point) / 2
    stage = np.where(branch == 0, 0, np.where(branch == 1, 1, 3) + late)

    obs = pd.DataFrame(index=pd.Index([f"cell{i}" for i in range(n_cells)]))
    obs["batch"] = pd.Categorical.from_codes(batch, [f"batch{j}" for j in range(n_batches)])
    obs["time"] = t
    obs["branch"] = pd.Categorical.from_codes(branch, ["root", "branch1", "branch2"])
    obs["cell_type"] = pd.Categorical.from_codes(stage, list(STAGES))
    var = pd.DataFrame(index=pd.Index([f"gene{i}" for i in range(n_genes)]))
    var["true_mean"], var["is_dynamic"] = p, dynamic
    names = ["start", "branch_point", "mid_branch1", "end_branch1", "mid_branch2", "end_branch2"]
    for name, a in zip(names, anchors):
        var[f"traj_lfc_{name}"] = a
    for j in range(n_batches):
        var[f"batch_factor_batch{j}"] = np.exp(batch_log[j])
    params = {
        "n_cells": n_cells,
        "n_genes": n_genes,
        "n_batches": n_batches,
        "seed": seed,
        "branch_point": branch_point,
        "dynamic_fraction": dynamic_fraction,
        "lfc_sd": lfc_sd,
        "batch_effect": batch_effect,
        "batch_library_shift": batch_library_shift,
        "library_median": library_median,
        "library_log_sd": library_log_sd,
        "mean_log_sd": mean_log_sd,
        "dispersion": dispersion,
    }
    uns = {"simulation": params, "true_tree": [list(e) for e in TRUE_TREE]}
    gene_factor = (p * np.exp(batch_log)).astype(np.float32)  # (batches, genes)

    def block(b: int) -> sp.csr_matrix:
        lo, hi = b * _BLOCK_CELLS, min((b + 1) * _BLOCK_CELLS, n_cells)
        rng = _rng(seed, 12, b)
        mu = np.exp2(_log2_factor(t[lo:hi], branch[lo:hi], anchors, branch_point)).astype(np.float32)
        mu *= gene_factor[batch[lo:hi]]
        mu *= lib[lo:hi, None].astype(np.float32) / np.float32(dispersion)  # gamma scale mu / theta
        lam = rng.standard_gamma(np.float32(dispersion), size=mu.shape, dtype=np.float32) * mu
        return sp.csr_matrix(rng.poisson(lam), dtype=np.float32)

    n_blocks = -(-n_cells // _BLOCK_CELLS)
    if path is None:
        X = sp.vstack([block(b) for b in range(n_blocks)], format="csr")
        return ad.AnnData(X=X, obs=obs, var=var, uns=uns)

    import h5py

    ad.AnnData(obs=obs, var=var, uns=uns).write_h5ad(path)
    with h5py.File(path, "a") as f:
        disk, buf = None, _RowBuffer(n_genes, min(chunk_size, n_cells))
        for b in range(n_blocks):
            buf.add(block(b))
            if buf.rows() >= chunk_size or b == n_blocks - 1:
                chunk = buf.pop()
                if disk is None:
                    write_elem(f, "X", chunk)
                    disk = sparse_dataset(f["X"])
                else:
                    disk.append(chunk)
    return path
