"""Integration quality does not regress: cellvi SCVI's scIB bio conservation on pbmc_3chemistries.

The reference is the value at seed 0 of default training, measured the same way (exact kNN) by
bench/integration_regression.py from bench/integration.py's cached latents; its results file gives
the spread over seeds, from which the tolerance is chosen (see docs/integration.md).
"""

from __future__ import annotations

import anndata as ad
import pytest

import cellvi
from cellvi.analysis import benchmark_integration
from tests.conftest import real_data_path

REFERENCE_BIO = None  # bench/results/integration_regression.json "seed0"
TOLERANCE = 0.02


def test_pbmc_bio_conservation_stays_at_reference():
    pytest.importorskip("scib_metrics")
    adata = ad.read_h5ad(real_data_path("pbmc_3chemistries.h5ad"))
    cellvi.settings.seed = 0
    cellvi.model.SCVI.setup_anndata(adata, batch_key="batch")
    model = cellvi.model.SCVI(adata)
    model.train()  # defaults: 400 epochs at 1,200 cells
    adata.obsm["X_scvi"] = model.get_latent_representation()
    bio = benchmark_integration(adata, ["X_scvi"], "batch", "cell_type", neighbors="exact").loc["X_scvi", "Bio conservation"]
    assert abs(bio - REFERENCE_BIO) <= TOLERANCE, f"bio conservation {bio:.4f}, reference {REFERENCE_BIO:.4f}"
