"""Integration quality on real data: benchmark_integration's table, and cellvi SCVI's scIB bio
conservation on pbmc_3chemistries at a fixed seed.

The reference is the value at seed 0 of default training, measured the same way (default training,
exact kNN) by ``bench/integration.py --neighbors exact``: the "cellvi SCVI" row of seed 0 in
bench/results/integration_pbmc_3chemistries.csv, whose other seeds give the spread that the
tolerance is chosen from (see docs/integration.md). Both tests share one
training and one scoring call (scib-metrics compiles its JAX code once per data shape).
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import torch
from tests.conftest import real_data_path

import cellvi
from cellvi.analysis import benchmark_integration

REFERENCE_BIO = 0.6286  # bench/results/integration_pbmc_3chemistries.csv, cellvi SCVI, seed 0 (1 thread)
# Seeds 0-4 gave 0.629, 0.693, 0.666, 0.673, 0.657 (sd 0.024): another seed, or other hardware whose float
# round-off sends training down another path, can move the score by more than this tolerance. At
# seed 0 on one thread (as the reference) the value is reproducible; a failure on new hardware
# should be checked against a rerun of the benchmark's seeds before it is read as a regression.
TOLERANCE = 0.02
BIO = ["Isolated labels", "KMeans NMI", "KMeans ARI", "Silhouette label", "cLISI"]
BATCH = ["BRAS", "iLISI", "KBET", "Graph connectivity", "PCR comparison"]


@pytest.fixture(scope="module")
def scored():
    pytest.importorskip("scib_metrics")
    adata = ad.read_h5ad(real_data_path("pbmc_3chemistries.h5ad"))
    for key in ("batch", "cell_type"):  # as bench/integration_worker.py reads it
        adata.obs[key] = adata.obs[key].astype(str).astype("category")
    cellvi.settings.seed = 0
    cellvi.settings.progress_bar = False
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the reference run (bench/integration_worker.py)
    cellvi.model.SCVI.setup_anndata(adata, batch_key="batch")
    model = cellvi.model.SCVI(adata)
    try:
        model.train()  # defaults: 400 epochs at 1,200 cells, as the reference
        adata.obsm["X_scvi"] = model.get_latent_representation()
    finally:
        torch.set_num_threads(threads)
    log = np.log1p(adata.X.toarray() / adata.X.sum(1).A * 1e4)
    u, s, _ = np.linalg.svd(log - log.mean(0), full_matrices=False)
    adata.obsm["X_pca10"] = u[:, :10] * s[:10]  # the same shape as the latent: one JAX compilation
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
    # scVI mixes the three chemistries far better than PCA of the log counts
    assert df.loc["X_scvi", "Batch correction"] > df.loc["X_pca10", "Batch correction"] + 0.1
    assert (set(adata.obsm), set(adata.uns), list(adata.obs.columns)) == before  # nothing of the user's changed


def test_pbmc_bio_conservation_stays_at_reference(scored):
    bio = scored[1].loc["X_scvi", "Bio conservation"]
    assert abs(bio - REFERENCE_BIO) <= TOLERANCE, f"bio conservation {bio:.4f}, reference {REFERENCE_BIO:.4f}"
