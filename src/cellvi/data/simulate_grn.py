"""Counts driven by a known gene regulatory network along a branching trajectory.

Every cell has a pseudotime ``t ~ U(0, 1)``; cells with ``t < 0.3`` are the ``"root"``, later cells go to
``"branch1"`` or ``"branch2"`` (50/50). Each gene has an *activity* ``a[c, g] >= 0`` (linear scale,
about 1 when fully on), computed in the network's topological order::

    drivers:   TF0 (root: 1 -> 0 over the root), TF1 (rises along branch1), TF2 (rises along branch2),
               a = floor + smoothstep(...)
    regulated: a[c, g] = max(base[g] + sum_r w[r, g] * f(a[c, r]), 0) * noise[c, g]
    free:      a[c, g] = 1 * noise[c, g]          (genes with no regulator)

with ``f(a) = a`` (``kinetics="linear"``, the default) or the switch-like Hill function
``f(a) = (1 + K^n) a^n / (K^n + a^n)`` (``kinetics="hill"``: about 0 below the threshold ``K``, about 1
above it, ``f(1) = 1``; the kind of response BoolODE, which made BEELINE's data sets, simulates).

``noise ~ LogNormal(0, noise_sd)`` is drawn per cell and gene *before* the gene's activity is passed on,
so a regulator's cell-to-cell variation propagates to its targets (what lets regression find the edges
inside one cluster). Counts: ``x ~ NB(mean = L * p[g] * a * batch_factor[batch, g], theta[g])`` with
``p[g]`` a gene's share of the library and ``L`` a log-normal library size shifted per batch.

The true network (regulator, target, weight, sign) is ``adata.uns["true_network"]``.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import InvalidParameterError

__all__ = ["simulate_grn"]

_BRANCH_POINT = 0.3


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _network(rng, n_genes, n_tfs, frac_free, max_regulators):
    """Edges (regulator, target, weight) of a DAG. TF0-2 are drivers; the last TF has neither regulators
    nor targets (expressed everywhere, a knockout of it must change nothing)."""
    edges = []
    for tf in range(3, n_tfs - 1):  # each downstream TF is activated by one or two earlier TFs
        for r in rng.choice(tf, size=min(tf, rng.integers(1, 3)), replace=False):
            if r != n_tfs - 1:
                edges.append((int(r), tf, float(rng.uniform(0.6, 1.0))))
    senders = np.arange(n_tfs - 1)  # every TF but the orphan
    n_free = round(frac_free * (n_genes - n_tfs))
    for g in range(n_tfs + n_free, n_genes):
        k = int(rng.integers(1, max_regulators + 1))
        for r in rng.choice(senders, size=k, replace=False):
            sign = 1.0 if rng.random() < 0.75 else -1.0
            edges.append((int(r), g, sign * float(rng.uniform(0.5, 1.0))))
    return edges


def simulate_grn(
    n_cells: int = 2000,
    n_genes: int = 200,
    n_tfs: int = 20,
    n_batches: int = 2,
    seed: int = 0,
    *,
    frac_free: float = 0.3,
    max_regulators: int = 3,
    noise_sd: float = 0.4,
    driver_floor: float = 0.02,
    library_median: float = 5000.0,
    library_log_sd: float = 0.3,
    batch_effect: float = 0.2,
    dispersion: float = 10.0,
    kinetics: str = "linear",
    hill_k: float = 0.5,
    hill_n: float = 4.0,
) -> ad.AnnData:
    """Simulate UMI counts (cells x genes, CSR float32) from a known gene regulatory network.

    Genes ``TF0..TF{n_tfs-1}`` are the transcription factors (``var["is_tf"]``): TF0 drives the root,
    TF1 branch1, TF2 branch2; the last TF is expressed everywhere but has no regulators and no targets
    (``uns["no_target_tf"]``). Genes ``G*`` are
    targets (1 to ``max_regulators`` TFs each, 75% activating) or, a fraction ``frac_free`` of them,
    unregulated. ``obs``: ``pseudotime`` (0-1), ``branch`` / ``cell_type`` (root, branch1, branch2),
    ``batch``. ``layers["activity"]``: the noise-free-of-counting activity ``a`` (cells x genes).
    ``uns["true_network"]``: DataFrame regulator, target, weight, sign. ``dispersion``: NB inverse
    dispersion theta (higher is less noisy). ``kinetics``: ``"linear"`` or ``"hill"`` (threshold
    ``hill_k`` in activity units, steepness ``hill_n``), how a target responds to its regulators' activity
    (see the module docstring). The same arguments give the same data.
    """
    if kinetics not in ("linear", "hill"):
        raise InvalidParameterError(f"kinetics must be 'linear' or 'hill', got {kinetics!r}.")
    if hill_k <= 0 or hill_n <= 0:
        raise InvalidParameterError("simulate_grn needs hill_k > 0 and hill_n > 0.")
    if n_tfs < 4 or n_genes <= n_tfs:
        raise InvalidParameterError("simulate_grn needs n_tfs >= 4 and n_genes > n_tfs.")
    if n_cells < 3 or n_batches < 1:
        raise InvalidParameterError("simulate_grn needs n_cells >= 3 and n_batches >= 1.")
    rng = np.random.default_rng(seed)
    names = [f"TF{i}" for i in range(n_tfs)] + [f"G{i}" for i in range(n_genes - n_tfs)]
    edges = _network(rng, n_genes, n_tfs, frac_free, max_regulators)
    W = np.zeros((n_genes, n_genes))
    for r, g, w in edges:
        W[r, g] = w
    repressed = np.minimum(W, 0).sum(0)  # a repressed gene is on when its repressors are off
    base = np.where(W.any(0), 0.05 - repressed, 1.0)

    t = rng.uniform(0, 1, n_cells)
    branch = np.where(t < _BRANCH_POINT, 0, rng.integers(1, 3, n_cells))
    after = _smoothstep((t - _BRANCH_POINT) / (1 - _BRANCH_POINT))
    a = np.zeros((n_cells, n_genes))
    noise = rng.lognormal(0.0, noise_sd, (n_cells, n_genes))
    a[:, 0] = driver_floor + _smoothstep(1 - t / _BRANCH_POINT)
    a[:, 1] = driver_floor + np.where(branch == 1, after, 0.0)
    a[:, 2] = driver_floor + np.where(branch == 2, after, 0.0)
    a[:, :3] *= noise[:, :3]

    def response(x):
        if kinetics == "linear":
            return x
        xn = x**hill_n
        return (1 + hill_k**hill_n) * xn / (hill_k**hill_n + xn)

    for g in range(3, n_genes):  # topological order: regulators always have lower indices
        regs = np.flatnonzero(W[:, g])
        level = base[g] + response(a[:, regs]) @ W[regs, g] if len(regs) else np.ones(n_cells)
        a[:, g] = np.maximum(level, 0.0) * noise[:, g]

    p = rng.lognormal(0.0, 1.0, n_genes)
    p /= p.sum()
    bt = rng.integers(0, n_batches, n_cells)
    bfac = rng.lognormal(0.0, batch_effect, (n_batches, n_genes))
    lib = library_median * rng.lognormal(0.0, library_log_sd, n_cells) * rng.lognormal(0, 0.1, n_batches)[bt]
    mu = lib[:, None] * p * a * bfac[bt] / np.mean(a, axis=0).clip(1e-3)  # mean activity ~ share p
    lam = rng.gamma(dispersion, mu / dispersion)
    counts = rng.poisson(lam).astype(np.float32)

    seg = np.array(["root", "branch1", "branch2"])[branch]
    obs = pd.DataFrame(
        {
            "pseudotime": t,
            "branch": pd.Categorical(seg, categories=["root", "branch1", "branch2"]),
            "cell_type": pd.Categorical(seg, categories=["root", "branch1", "branch2"]),
            "batch": pd.Categorical([f"batch{b}" for b in bt]),
        },
        index=[f"cell{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame({"is_tf": [n.startswith("TF") for n in names]}, index=names)
    truth = pd.DataFrame(
        [(names[r], names[g], w, "+" if w > 0 else "-") for r, g, w in edges],
        columns=["regulator", "target", "weight", "sign"],
    )
    adata = ad.AnnData(sp.csr_matrix(counts), obs=obs, var=var)
    adata.layers["activity"] = a.astype(np.float32)
    adata.uns["true_network"] = truth
    adata.uns["drivers"] = {"root": "TF0", "branch1": "TF1", "branch2": "TF2"}
    adata.uns["no_target_tf"] = names[n_tfs - 1]
    return adata
