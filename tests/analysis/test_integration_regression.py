"""Integration quality on real data: benchmark_integration's table, and cellvi SCVI's scIB scores on
pbmc_3chemistries, trained shortened (EPOCHS epochs with a KL warm-up of the same length, so that the
default schedule keeps its shape; one thread), seed 0.

The references and tolerances come from the seed spread measured at exactly these settings by
``bench/integration_regression.py`` (bench/results/integration_regression.md, seeds 0-4): bio
conservation 0.6831 ± 0.0151 (mean ± sd; range 0.665-0.702), batch correction 0.6011 ± 0.0314 (range
0.553-0.636). The reference is the seed mean, not one seed's value, and the tolerance is 3 sd
(rounded up): any seed, and other hardware whose round-off sends training down another path (which
acts like another seed: bench/results/integration_parity.md), should stay inside it. The tolerance on
bio is wider than the issue's 0.02 because one seed's sd already is 0.015. The same script shows
what the test rejects: the 10-component PCA of the log counts (no integration) has bio 0.668 (inside)
but batch correction 0.293 (0.31 below the reference, over 3x the tolerance); a model set up without ``batch_key`` (batch not
injected) has bio 0.626 and batch correction 0.263, both out. Bio conservation alone cannot tell PCA
from scVI on this set, so both groups are checked. At 60 epochs the batch correction was
0.40 ± 0.06, too close to PCA's to tell them apart, hence 100. Both tests share one training and one
scoring call (scib-metrics compiles its
JAX code once per data shape).
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import torch
from tests.conftest import real_data_path

import cellvi
from cellvi.analysis import benchmark_integration

EPOCHS = 100
REFERENCE = {"Bio conservation": 0.6831, "Batch correction": 0.6011}  # seed means, see the docstring
TOLERANCE = {"Bio conservation": 0.046, "Batch correction": 0.095}  # 3 sd of the seeds, rounded up
BIO = ["Isolated labels", "KMeans NMI", "KMeans ARI", "Silhouette label", "cLISI"]
BATCH = ["BRAS", "iLISI", "KBET", "Graph connectivity", "PCR comparison"]


def load(path: str):
    adata = ad.read_h5ad(path)
    for key in ("batch", "cell_type"):  # as bench/integration_worker.py reads it
        adata.obs[key] = adata.obs[key].astype(str).astype("category")
    return adata


def latent_of(adata, seed: int, batch_key: str | None = "batch") -> np.ndarray:
    """cellvi SCVI's latent after the test's shortened default training, on one thread."""
    cellvi.settings.seed = seed
    cellvi.settings.progress_bar = False
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    data = adata.copy()
    data.obsm.clear()
    try:
        cellvi.model.SCVI.setup_anndata(data, batch_key=batch_key)
        model = cellvi.model.SCVI(data)
        model.train(max_epochs=EPOCHS, plan_kwargs={"n_epochs_kl_warmup": EPOCHS})
        return model.get_latent_representation()
    finally:
        torch.set_num_threads(threads)


def pca10(adata) -> np.ndarray:
    """10-component PCA of the log-normalised counts: the latent's shape (one JAX compilation)."""
    log = np.log1p(adata.X.toarray() / adata.X.sum(1).A * 1e4)
    u, s, _ = np.linalg.svd(log - log.mean(0), full_matrices=False)
    return u[:, :10] * s[:10]


@pytest.fixture(scope="module")
def scored():
    pytest.importorskip("scib_metrics")
    adata = load(real_data_path("pbmc_3chemistries.h5ad"))
    adata.obsm["X_scvi"] = latent_of(adata, 0)
    adata.obsm["X_pca10"] = pca10(adata)
    before = (set(adata.obsm), set(adata.uns), list(adata.obs.columns))
    df = benchmark_integration(adata, ["X_scvi", "X_pca10"], "batch", "cell_type", neighbors="exact")
    return adata, df, before


def test_table_shape_columns_and_totals(scored):
    adata, df, before = scored
    assert list(df.index) == ["X_scvi", "X_pca10"]
    assert list(df.columns) == BIO + BATCH + ["Batch correction", "Bio conservation", "Total"]
    assert df.dtypes.eq(np.float64).all() and np.isfinite(df.to_numpy()).all()
    np.testing.assert_allclose(df["Bio conservation"], df[BIO].mean(1))
    np.testing.assert_allclose(df["Batch correction"], df[BATCH].mean(1))
    np.testing.assert_allclose(df["Total"], 0.6 * df["Bio conservation"] + 0.4 * df["Batch correction"])
    assert df.attrs["metric_type"]["cLISI"] == "Bio conservation"
    assert (set(adata.obsm), set(adata.uns), list(adata.obs.columns)) == before  # nothing of the user's changed


@pytest.mark.parametrize("group", list(REFERENCE))
def test_pbmc_scib_scores_stay_at_reference(scored, group):
    value = scored[1].loc["X_scvi", group]
    assert abs(value - REFERENCE[group]) <= TOLERANCE[group], (
        f"{group} {value:.4f}, reference {REFERENCE[group]:.4f} ± {TOLERANCE[group]}"
    )


def test_the_check_rejects_unintegrated_pca(scored):
    """The same check fails for the PCA embedding (batch correction far below the reference)."""
    df = scored[1]
    failing = [g for g in REFERENCE if abs(df.loc["X_pca10", g] - REFERENCE[g]) > TOLERANCE[g]]
    assert "Batch correction" in failing
