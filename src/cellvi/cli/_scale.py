"""The memory-bounded pieces of ``cellvi run`` for large inputs (1M cells in a few GB).

- :func:`training_counts`: the trained-on genes' counts without a copy of the whole matrix: the
  input itself when every gene is kept (in memory, or still on disk when backed), a chunked copy of
  the chosen genes into a backed file beside the outputs when the input is backed, else an in-memory
  CSR subset.
- :func:`umap_layout`: scanpy's UMAP up to ``UMAP_FIT_CELLS`` cells; above, umap-learn fitted on that
  many random cells (scanpy's settings) and every other cell placed by ``UMAP.transform`` against
  that fit, in chunks (a full UMAP of 1M cells takes hours on two cores).
- :func:`knn_options`: above ``LEAN_KNN_CELLS`` cells the neighbour search starts from fewer random
  projection trees than scanpy's default (the forest of 55 trees is ~1 GB of the search's peak at 1M).
- :func:`paga`: scanpy's PAGA; above ``PAGA_CELLS`` cells on the neighbour graph among that many random
  cells (at 1M cells PAGA's directed igraph and its cluster-graph copy took +2.2 GB, the run's peak).
- :func:`lean_igraph`: scanpy builds the igraph of Leiden and PAGA from a Python list of (source,
  target) tuples, ~180 bytes per edge at its peak (~3.9 GB for the ~22M edges of 1M cells). Inside this
  context scanpy builds the same graph (same edges, order and weights) in chunks of int64 arrays
  (~60 bytes per edge), and for Leiden above ``PAIRS_ONCE_CELLS`` cells each undirected pair once
  (see :func:`igraph_from_adjacency`), its weights one array rather than a Python list.
- :func:`write_result`: a backed input's matrix is copied into ``result.h5ad`` by HDF5 (h5py's
  ``copy``), never read into memory.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import numpy as np

from ..data.matrix import sample_rows

UMAP_FIT_CELLS = 50_000
TRANSFORM_CHUNK = 100_000
CHUNK_EDGES = 1_000_000
#: above this many cells Leiden's graph holds each pair once (another random path to an equally good partition)
PAIRS_ONCE_CELLS = 200_000
#: above this many cells the neighbour search builds ``KNN_TREES`` random projection trees, not scanpy's
#: 5 + sqrt(cells) / 20 (55 at 1M cells: the forest alone takes ~1 GB there)
LEAN_KNN_CELLS = 200_000
KNN_TREES = 8
#: above this many cells PAGA runs on the neighbour graph among this many random cells: its
#: connectivities are ratios of the edge counts between clusters to their expected counts, which a
#: uniform sample of cells estimates without bias (tests/cli/test_scale.py compares it with the full graph)
PAGA_CELLS = 200_000


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
    fit = sample_rows(n, UMAP_FIT_CELLS, seed)
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


def paga(ldata, seed: int, max_cells: int = PAGA_CELLS) -> int:
    """scanpy's PAGA (v1.2) over ``obs['leiden']``, written into ``ldata.uns['paga']``; above
    ``max_cells`` cells it runs on the neighbour graph among ``max_cells`` random cells (the induced
    subgraph) and ``uns['leiden_sizes']`` stays that of all cells. Returns the cells PAGA used."""
    import anndata
    import scanpy as sc

    n = ldata.n_obs
    if n <= max_cells:
        with lean_igraph():
            sc.tl.paga(ldata, groups="leiden")
        return n
    keep = sample_rows(n, max_cells, seed)
    sub = anndata.AnnData(obs=ldata.obs[["leiden"]].iloc[keep].copy())
    sub.uns["neighbors"] = dict(ldata.uns["neighbors"])
    for key in ("distances", "connectivities"):
        sub.obsp[key] = ldata.obsp[key][keep][:, keep]
    with lean_igraph():
        sc.tl.paga(sub, groups="leiden")
    ldata.uns["paga"] = {**sub.uns["paga"], "subsample_cells": int(max_cells)}
    ldata.uns["leiden_sizes"] = np.bincount(ldata.obs["leiden"].cat.codes, minlength=len(sub.uns["leiden_sizes"]))
    return max_cells


def knn_options(n_obs: int, seed: int) -> dict:
    """Keyword arguments for ``sc.pp.neighbors`` (15 neighbours, euclidean): none up to
    ``LEAN_KNN_CELLS`` cells; above, scanpy's own pynndescent transformer with ``KNN_TREES`` trees for
    the initial guess (the NN-descent iterations, scanpy's log2(cells), then refine it)."""
    if n_obs <= LEAN_KNN_CELLS:
        return {}
    import scanpy as sc
    from pynndescent import PyNNDescentTransformer

    trees = PyNNDescentTransformer(
        n_neighbors=15,
        n_trees=KNN_TREES,
        n_iters=max(5, round(np.log2(n_obs))),
        random_state=seed,
        n_jobs=sc.settings.n_jobs,
    )
    return {"transformer": trees}


def igraph_from_adjacency(adjacency, *, directed: bool = False, pairs_once: bool = False, array_weights: bool = False):
    """scanpy's ``get_igraph_from_adjacency``: the same edges (in the order of ``adjacency.nonzero()``)
    and weights, added in chunks of ``CHUNK_EDGES`` from int64 arrays (igraph's conversion of one
    whole edge array or list costs ~160 bytes per edge; the built graph ~32). Equal weights share one
    Python float. ``pairs_once`` (undirected, symmetric ``adjacency``): each pair once, self-loops at
    half weight, where scanpy adds each pair in both directions: every weight halved, which leaves
    modularity unchanged, with half the edges. Leiden then takes another random path: its partition
    differs from scanpy's (ARI 0.75-0.9 on the tests' data) but is as good (modularity within the
    spread over seeds). ``array_weights`` (for ``community_leiden`` only): the weights stay one float64
    array (8 bytes per edge) handed to igraph's Leiden for ``weights="weight"``, instead of an edge
    attribute (a Python list of floats, 32 bytes per edge; the same numbers reach igraph's C code)."""
    import igraph as ig
    import scipy.sparse as sp

    once = pairs_once and not directed and _symmetric(adjacency)
    if not (sp.isspmatrix_csr(adjacency) or isinstance(adjacency, sp.csr_array)):
        adjacency = sp.csr_matrix(adjacency)  # (scanpy's graphs are CSR: nonzero() is in row order)
    indptr, indices, data = adjacency.indptr, adjacency.indices, adjacency.data
    nonzero = data[data != 0]
    equal = nonzero.size > 0 and bool(np.all(nonzero == nonzero[0]))
    first = float(nonzero[0]) if equal else 0.0
    del nonzero
    g = (_array_weight_graph() if array_weights else ig.Graph)(n=adjacency.shape[0], directed=directed)
    parts, n_edges, r0 = [], 0, 0
    while r0 < adjacency.shape[0]:  # blocks of rows holding about CHUNK_EDGES entries
        r1 = int(np.searchsorted(indptr, indptr[r0] + CHUNK_EDGES, side="right")) - 1
        r1 = min(max(r1, r0 + 1), adjacency.shape[0])
        a, b = int(indptr[r0]), int(indptr[r1])
        rows = np.repeat(np.arange(r0, r1, dtype=np.int64), np.diff(indptr[r0 : r1 + 1]))
        cols = indices[a:b].astype(np.int64)
        keep = data[a:b] != 0
        if once:
            keep &= rows <= cols
        g.add_edges(np.column_stack((rows[keep], cols[keep])))
        n_edges += int(keep.sum())
        if not equal:
            w = np.asarray(data[a:b][keep], dtype=np.float64)
            if once:
                w[rows[keep] == cols[keep]] *= 0.5
            parts.append(w)
        r0 = r1
    if array_weights:
        g.weight_array = np.concatenate(parts) if parts else np.asarray(_equal_weights(g, first, once), np.float64)
    elif equal and not once:
        g.es["weight"] = [first] * n_edges
    else:
        g.es["weight"] = np.concatenate(parts) if parts else _equal_weights(g, first, once)
    return g


@functools.cache
def _array_weight_graph():
    """An ``igraph.Graph`` whose ``weight_array`` (float64, one per edge) stands for ``weights="weight"``
    in ``community_leiden`` (scanpy's igraph-flavour Leiden passes the attribute's name)."""
    import igraph as ig

    class ArrayWeightGraph(ig.Graph):
        weight_array: np.ndarray

        def community_leiden(self, *args, weights=None, **kwargs):
            if isinstance(weights, str) and weights == "weight":
                weights = self.weight_array
            return super().community_leiden(*args, weights=weights, **kwargs)

    return ArrayWeightGraph


def _equal_weights(g, value: float, once: bool) -> list:
    """Weights of a graph whose entries all equal ``value`` (self-loops halved when ``once``)."""
    if not once:
        return [value] * g.ecount()
    return [value * 0.5 if e.source == e.target else value for e in g.es]


def _symmetric(adjacency) -> bool:
    return adjacency.shape[0] == adjacency.shape[1] and (adjacency != adjacency.T).nnz == 0


def release_memory() -> None:
    """Hand the heap memory freed by earlier steps back to the OS (glibc's ``malloc_trim``; elsewhere a
    no-op), so that the next step's peak adds to what is live, not to what was once used."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@contextlib.contextmanager
def lean_igraph(pairs_once: bool = False, array_weights: bool = False):
    """Within the block, scanpy (Leiden, PAGA) builds its igraph with :func:`igraph_from_adjacency`
    (``pairs_once`` and ``array_weights`` only for igraph-flavour Leiden: PAGA counts edges in both
    directions and reads the weight attribute)."""
    from scanpy import _utils

    original = getattr(_utils, "get_igraph_from_adjacency", None)
    release_memory()
    if original is None:  # a scanpy without this helper: nothing to replace
        yield
        return
    _utils.get_igraph_from_adjacency = functools.partial(
        igraph_from_adjacency, pairs_once=pairs_once, array_weights=array_weights
    )
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
