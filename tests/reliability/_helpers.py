"""Shared helpers of the reliability tests: small AnnData builders and an exact before/after comparison."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp


def make_adata(n_cells=60, n_genes=20, fmt="csr", dtype=np.float32, seed=0, n_batches=2) -> ad.AnnData:
    """Poisson counts with obs columns batch, labels, cat (categorical covariate) and cont (continuous)."""
    g = np.random.default_rng(seed)
    X = g.poisson(2.0, size=(n_cells, n_genes)).astype(dtype)
    if fmt == "csr":
        X = sp.csr_matrix(X)
    elif fmt == "csc":
        X = sp.csc_matrix(X)
    obs = pd.DataFrame(
        {
            "batch": [f"b{i % n_batches}" for i in range(n_cells)],
            "labels": [f"t{i % 3}" for i in range(n_cells)],
            "cat": [f"c{i % 2}" for i in range(n_cells)],
            "cont": g.normal(size=n_cells),
        },
        index=[f"cell{i}" for i in range(n_cells)],
    )
    a = ad.AnnData(X, obs=obs)
    a.var_names = [f"gene{i}" for i in range(n_genes)]
    return a


def _same(a, b, where: str) -> None:
    if sp.issparse(a) or sp.issparse(b):
        assert sp.issparse(a) and sp.issparse(b) and a.format == b.format, where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        for part in ("data", "indices", "indptr"):
            assert np.array_equal(getattr(a, part), getattr(b, part), equal_nan=True), f"{where}.{part}"
    elif isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray), where
        assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"), where
    elif isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b, obj=where)
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{where} keys {set(a)} != {set(b)}"
        for k in a:
            _same(a[k], b[k], f"{where}[{k!r}]")
    else:
        assert type(a) is type(b) and a == b, where


def assert_adata_unchanged(before: ad.AnnData, after: ad.AnnData) -> None:
    """X, layers, obs, var, obsm and uns of ``after`` are exactly those of ``before`` (a deep copy)."""
    _same(before.X, after.X, "X")
    _same(dict(before.layers), dict(after.layers), "layers")
    _same(before.obs, after.obs, "obs")
    _same(before.var, after.var, "var")
    _same(dict(before.obsm), dict(after.obsm), "obsm")
    _same(dict(before.uns), dict(after.uns), "uns")


def snapshot(adata: ad.AnnData) -> ad.AnnData:
    return copy.deepcopy(adata)


def folder_digest(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder``, by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(folder).rglob("*"))
        if p.is_file()
    }
