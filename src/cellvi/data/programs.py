"""Simulated counts driven by known gene programmes: the known answer for linear decoders (LDVAE).

Cell ``c``'s mean count of gene ``g``::

    mu[c, g] = L[c] * p[g] * exp(sum_k a[c, k] * w[k, g]) * batch_factor[batch[c], g]
    x[c, g] ~ NB(mean=mu[c, g], inverse dispersion=theta[g])

Programme ``k`` is a set of ``genes_per_program`` genes (disjoint sets, chosen at random); ``w[k, g]``
is ``effect * Uniform(0.5, 1.5)`` for its genes and 0 elsewhere. A cell's activity ``a[c, k]`` is 0 with
probability ``1 - active_fraction``, else ``Exponential(1)``: programmes switch on independently,
with different strengths. ``L`` is log-normal; the batch factor ``exp(N(0, batch_effect))`` per gene.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import InvalidParameterError

__all__ = ["simulate_programs"]


def simulate_programs(
    n_cells: int = 6000,
    n_genes: int = 800,
    n_programs: int = 5,
    genes_per_program: int = 50,
    n_batches: int = 2,
    seed: int = 0,
    *,
    effect: float = 1.0,
    active_fraction: float = 0.5,
    batch_effect: float = 0.3,
    library_median: float = 2000.0,
    library_log_sd: float = 0.4,
    mean_log_sd: float = 1.5,
    theta_median: float = 3.0,
) -> ad.AnnData:
    """Simulate UMI counts (cells x genes) whose gene programmes are known.

    Returns an AnnData with raw counts in ``X`` (CSR float32), ``obs["batch"]`` ("batch0", ...),
    ``obs["program_<k>"]`` the activities ``a[:, k]``, ``var["program"]`` the programme of each gene
    ("P0", ... or "none"), ``varm["program_weights"]`` the true ``w`` transposed (genes x programmes) and
    ``uns["programs"]`` a dict programme name -> list of its genes. Depends only on the arguments.
    """
    if n_programs * genes_per_program > n_genes:
        raise InvalidParameterError("n_programs * genes_per_program must not exceed n_genes")
    if min(n_cells, n_genes, n_programs, genes_per_program, n_batches) < 1:
        raise InvalidParameterError("every size must be a positive integer")
    rng = np.random.default_rng(seed)
    genes = np.array([f"gene{g}" for g in range(n_genes)])
    chosen = rng.permutation(n_genes)[: n_programs * genes_per_program].reshape(n_programs, genes_per_program)
    w = np.zeros((n_programs, n_genes))
    for k in range(n_programs):
        w[k, chosen[k]] = effect * rng.uniform(0.5, 1.5, genes_per_program)
    log_p = rng.normal(0.0, mean_log_sd, n_genes)
    p = np.exp(log_p) / np.exp(log_p).sum()
    theta = theta_median * np.exp(rng.normal(0.0, 0.5, n_genes))
    batch = rng.integers(0, n_batches, n_cells)
    batch_factor = np.exp(rng.normal(0.0, batch_effect, (n_batches, n_genes)))
    activity = rng.exponential(1.0, (n_cells, n_programs)) * (rng.random((n_cells, n_programs)) < active_fraction)
    library = library_median * np.exp(rng.normal(0.0, library_log_sd, n_cells))
    log_rate = np.log(p)[None, :] + activity @ w + np.log(batch_factor[batch])
    mu = library[:, None] * np.exp(log_rate)
    counts = rng.poisson(rng.gamma(theta[None, :], mu / theta[None, :]))
    program = np.full(n_genes, "none", dtype=object)
    for k in range(n_programs):
        program[chosen[k]] = f"P{k}"
    obs = pd.DataFrame(
        {"batch": pd.Categorical([f"batch{b}" for b in batch])}, index=[f"cell{c}" for c in range(n_cells)]
    )
    for k in range(n_programs):
        obs[f"program_{k}"] = activity[:, k]
    adata = ad.AnnData(
        X=sp.csr_matrix(counts.astype(np.float32)),
        obs=obs,
        var=pd.DataFrame({"program": pd.Categorical(program)}, index=genes),
    )
    adata.varm["program_weights"] = w.T.copy()
    adata.uns["programs"] = {f"P{k}": list(genes[np.sort(chosen[k])]) for k in range(n_programs)}
    return adata
