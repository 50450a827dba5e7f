"""Gene selection by zero enrichment, scvi-tools' ``scvi.data.poisson_gene_selection``.

A gene with more zeros than a Poisson model at each cell's library size predicts is variable (M3Drop's
idea). Per batch, with ``p_obs`` the observed fraction of cells where the gene is zero and ``p_exp`` the
Poisson expectation ``mean_c exp(-total_c * share_g)``, scvi-tools estimates the "probability of zero
enrichment" as the frequency of ``Bernoulli(p_obs) > Bernoulli(p_exp)`` over ``n_samples`` draws. That
frequency's expectation is ``p_obs * (1 - p_exp)``, which cellvi computes exactly (no sampling noise, so
ranks can differ from scvi-tools' on near-ties). Ranking and the columns written follow scvi-tools.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import InvalidParameterError, MissingKeyError
from .matrix import count_matrix, iter_row_chunks, validate_counts_chunk


def _batch_stats(X, minibatch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(observed zero fraction, expected zero fraction, enrichment probability), each (n_genes,)."""
    gene_sums, totals, nonzero = np.zeros(X.shape[1]), [], np.zeros(X.shape[1])
    for chunk in iter_row_chunks(X):
        gene_sums += np.asarray(chunk.sum(0)).ravel()
        totals.append(np.asarray(chunk.sum(1)).ravel())
        nonzero += np.asarray((chunk > 0).sum(0)).ravel()
    totals = np.concatenate(totals)
    n = len(totals)
    share = gene_sums / max(gene_sums.sum(), 1e-300)
    expected = np.zeros(X.shape[1])
    for start in range(0, n, minibatch_size):
        expected += np.exp(-np.outer(totals[start : start + minibatch_size], share)).sum(0)
    observed = 1.0 - nonzero / n
    expected /= n
    return observed, expected, observed * (1.0 - expected)


def poisson_gene_selection(
    adata,
    layer: str | None = None,
    n_top_genes: int = 4000,
    accelerator: str = "auto",
    device="auto",
    subset: bool = False,
    inplace: bool = True,
    n_samples: int = 10000,
    batch_key: str | None = None,
    silent: bool = False,
    minibatch_size: int = 5000,
) -> pd.DataFrame | None:
    """Mark the ``n_top_genes`` genes with the most zero enrichment (see the module's docstring).

    Raw counts in ``adata.X`` or ``adata.layers[layer]``. With ``batch_key`` the statistics are per batch
    and combined as scvi-tools does: median over batches, and genes ranked first by the number of
    batches where they are among the top ``n_top_genes``, then by median rank. ``inplace`` writes
    ``adata.var`` columns ``highly_variable``, ``observed_fraction_zeros``, ``expected_fraction_zeros``,
    ``prob_zero_enriched_nbatches``, ``prob_zero_enrichment``, ``prob_zero_enrichment_rank`` and
    ``adata.uns["hvg"]``; ``subset`` also keeps only the selected genes; otherwise a DataFrame is
    returned. ``accelerator``, ``device``, ``n_samples`` and ``silent`` are accepted for scvi-tools
    compatibility (the computation is exact, on the CPU).
    """
    if not isinstance(n_top_genes, (int, np.integer)) or n_top_genes < 1:
        raise InvalidParameterError(f"n_top_genes must be a positive integer, got {n_top_genes!r}.")
    if not isinstance(minibatch_size, (int, np.integer)) or minibatch_size < 1:
        raise InvalidParameterError(f"minibatch_size must be a positive integer, got {minibatch_size!r}.")
    X = count_matrix(adata, layer)
    start = 0
    for chunk in iter_row_chunks(X):
        validate_counts_chunk(chunk, start, layer)
        start += chunk.shape[0]
    if batch_key is None:
        groups = [np.arange(adata.n_obs)]
    else:
        if batch_key not in adata.obs.columns:
            raise MissingKeyError(f"Column {batch_key!r} is not in adata.obs.")
        values = adata.obs[batch_key].to_numpy()
        groups = [np.flatnonzero(values == b) for b in pd.unique(values)]
    stats = [_batch_stats(X[rows] if batch_key is not None else X, minibatch_size) for rows in groups]
    obs, exp, prob = (np.stack(s) for s in zip(*stats))
    ranked = prob.argsort(axis=1).argsort(axis=1)
    df = pd.DataFrame(index=np.array(adata.var_names))
    df["observed_fraction_zeros"] = np.median(obs, axis=0)
    df["expected_fraction_zeros"] = np.median(exp, axis=0)
    df["prob_zero_enriched_nbatches"] = np.sum(ranked >= (adata.n_vars - n_top_genes), axis=0)
    df["prob_zero_enrichment"] = np.median(prob, axis=0)
    df["prob_zero_enrichment_rank"] = np.median(ranked, axis=0)
    df["highly_variable"] = False
    top = df.nlargest(
        min(n_top_genes, adata.n_vars), ["prob_zero_enriched_nbatches", "prob_zero_enrichment_rank"]
    ).index
    df.loc[top, "highly_variable"] = True
    if not (inplace or subset):
        return df if batch_key is not None else df.drop(columns="prob_zero_enriched_nbatches")
    adata.uns["hvg"] = {"flavor": "poisson_zeros"}
    for col in df.columns:
        adata.var[col] = df[col].to_numpy()
    if subset:
        adata._inplace_subset_var(df["highly_variable"].to_numpy())
    return None
