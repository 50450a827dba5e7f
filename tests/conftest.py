"""Shared fixtures. Real data is looked up in $CELLVI_DATA_DIR or ../shared/data (from the repo root)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import cellvi

REPO = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    return Path(os.environ.get("CELLVI_DATA_DIR", REPO.parent / "shared" / "data"))


def real_data_path(name: str) -> Path:
    """Path of a file of the shared data, or skip the test with the reason."""
    path = data_dir() / name
    if not path.exists():
        pytest.skip(f"shared dataset {name} not found at {path} (set CELLVI_DATA_DIR)")
    return path


@pytest.fixture(autouse=True)
def _quiet_and_seeded():
    cellvi.settings.progress_bar = False
    cellvi.settings.seed = 0
    torch.set_num_threads(int(os.environ.get("CELLVI_TEST_THREADS", "2")))
    yield


@pytest.fixture
def small_adata():
    """400 simulated cells x 100 genes, 2 batches, 3 cell types, raw counts (CSR)."""
    return cellvi.data.simulate(n_cells=400, n_genes=100, n_batches=2, n_cell_types=3, seed=1)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
