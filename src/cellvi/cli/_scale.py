"""The memory-bounded pieces of ``cellvi run`` for large inputs (1M cells in a few GB).

- :func:`training_counts`: the trained-on genes' counts without a copy of the whole matrix: the
  input itself when every gene is kept (in memory, or still on disk when backed), a chunked copy of
  the chosen genes into a backed file beside the outputs when the input is backed, else an in-memory
  CSR subset.
- :func:`umap_layout`: scanpy's UMAP up to ``UMAP_FIT_CELLS`` cells; above, umap-learn fitted on that
  many random cells (scanpy's settings) and every other cell placed by ``UMAP.transform`` against
  that fit, in chunks (a full UMAP of 1M cells takes hours on two cores).
- :func:`lean_igraph`: scanpy builds the igraph of Leiden and PAGA from a Python list of (source,
  target) tuples, ~120 bytes per edge (2.6 GB for the ~22M edges of 1M cells). Inside this context
  scanpy builds the same graph (same edges, order and weights) from an int64 array instead.
- :func:`write_result`: a backed input's matrix is copied into ``result.h5ad`` by HDF5 (h5py's
  ``copy``), never read into memory.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

UMAP_FIT_CELLS = 50_000
TRANSFORM_CHUNK = 100_000


def training_counts(adata, cols: np.ndarray, layer: str | None, obs_keys, tmp: Path):
    """AnnData of the counts of genes ``cols`` (positions) and the ``obs_keys`` columns, backed when
    ``adata`` is backed (then a file under ``tmp`` unless it is ``adata`` itself)."""
    import anndata
    import pandas as pd
    import scipy.sparse as sp
    from anndata.io import sparse_dataset, write_elem

    from ..data.matrix import count_matrix, iter_row_chunks
    from ._common import subset_counts

    keys = list(dict.fromkeys(k for k in obs_keys if k))
    every_gene = len(cols) == adata.n_vars and bool(np.all(np.asarray(cols) == np.arange(adata.n_vars)))
    if adata.isbacked:
        if every_gene and layer is None:
            return adata  # trained straight from the file (cellvi.data.OnDiskLoader)
        import h5py

        path = tmp / "training_counts.h5ad"
        obs = adata.obs[keys].copy() if keys else pd.DataFrame(index=adata.obs_names)
        anndata.AnnData(obs=obs, var=pd.DataFrame(index=adata.var_names[cols])).write_h5ad(path)
        X = count_matrix(adata, layer)
        with h5py.File(path, "a") as f:
            disk = None
            for chunk in iter_row_chunks(X):
                part = sp.csr_matrix(chunk[:, cols], dtype=np.float32)
                if disk is None:
                    write_elem(f, "X", part)
                    disk = sparse_dataset(f["X"])
                else:
                    disk.append(part)
        return anndata.read_h5ad(path, backed="r")
    X = count_matrix(adata, layer)
    if every_gene and sp.isspmatrix_csr(X) and X.dtype == np.float32:
        obs = adata.obs[keys].copy() if keys else pd.DataFrame(index=adata.obs_names)
        return anndata.AnnData(X, obs=obs, var=pd.DataFrame(index=adata.var_names))  # no copy of X
    return subset_counts(adata, cols, layer, obs_keys)


def analysis_data(tdata):
    """The AnnData that scanpy's steps write into: ``tdata`` itself when in memory; for a backed
    ``tdata`` an in-memory one of its obs and gene names, without a matrix."""
    import anndata

    if not tdata.isbacked:
        return tdata
    return anndata.AnnData(obs=tdata.obs.copy(), var=tdata.var[[]].copy())


def umap_layout(ldata, seed: int) -> int:
    """Write ``obsm['X_umap']`` from ``obsm['X_scvi']`` and the neighbour graph; returns the number
    of cells the layout was fitted on (all of them up to ``UMAP_FIT_CELLS``)."""
    import scanpy as sc

    n = ldata.n_obs
    if n <= UMAP_FIT_CELLS:
        sc.tl.umap(ldata, random_state=seed)
        return n
    import umap

    z = np.asarray(ldata.obsm["X_scvi"], dtype=np.float32)
    fit = np.sort(np.random.default_rng(seed).choice(n, UMAP_FIT_CELLS, replace=False))
    # scanpy's defaults (min_dist 0.5, spread 1, 15 neighbours, spectral initialisation)
    reducer = umap.UMAP(n_neighbors=15, min_dist=0.5, spread=1.0, random_state=seed).fit(z[fit])
    out = np.empty((n, 2), dtype=np.float32)
    out[fit] = reducer.embedding_
    rest = np.setdiff1d(np.arange(n), fit)
    for start in range(0, len(rest), TRANSFORM_CHUNK):
        part = rest[start : start + TRANSFORM_CHUNK]
        out[part] = reducer.transform(z[part])
    ldata.obsm["X_umap"] = out
    ldata.uns["umap"] = {
        "params": {"a": float(reducer._a), "b": float(reducer._b)},
        "fit_cells": UMAP_FIT_CELLS,
        "others": "placed by umap.UMAP.transform",
    }
    return UMAP_FIT_CELLS


def igraph_from_adjacency(adjacency, *, directed: bool = False):
    """scanpy's ``get_igraph_from_adjacency`` (same edges, in the order of ``adjacency.nonzero()``,
    same weights) built from an int64 array rather than a list of tuples."""
    import igraph as ig

    coo = adjacency.tocoo()
    keep = coo.data != 0
    edges = np.empty((int(keep.sum()), 2), dtype=np.int64)
    edges[:, 0], edges[:, 1] = coo.row[keep], coo.col[keep]
    weights = np.asarray(coo.data[keep])
    del coo, keep
    g = ig.Graph(n=adjacency.shape[0], edges=edges, directed=directed)
    del edges
    g.es["weight"] = weights
    return g


@contextlib.contextmanager
def lean_igraph():
    """Within the block, scanpy's Leiden and PAGA build their igraph with :func:`igraph_from_adjacency`."""
    from scanpy import _utils

    original = getattr(_utils, "get_igraph_from_adjacency", None)
    if original is None:  # a scanpy without this helper: nothing to replace
        yield
        return
    _utils.get_igraph_from_adjacency = igraph_from_adjacency
    try:
        yield
    finally:
        _utils.get_igraph_from_adjacency = original


def write_result(adata, path: Path) -> None:
    """Write ``adata`` to ``path`` (.h5ad); a backed one's X and layers are copied file to file."""
    if not adata.isbacked:
        adata.write_h5ad(path)
        return
    import anndata
    import h5py

    meta = anndata.AnnData(
        obs=adata.obs,
        var=adata.var,
        uns=dict(adata.uns),
        obsm=dict(adata.obsm),
        obsp=dict(adata.obsp),
    )
    meta.write_h5ad(path)
    with h5py.File(adata.filename, "r") as src, h5py.File(path, "a") as dst:
        for key in ("X", "layers"):
            if key in src:
                if key in dst:
                    del dst[key]
                src.copy(src[key], dst, key)
