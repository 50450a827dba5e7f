"""Expression a block of cells at a time, so that 1M-cell data never sit densely in memory.

:class:`CountRows` holds the counts (an in-memory scipy CSR, or the ``X`` of an AnnData opened with
``backed="r"``, read from the file block by block) and each cell's effective library; it returns the
log-normalised expression of any set of cells on demand. :class:`RowBlocks` is a cluster's cells seen as
consecutive dense blocks (optionally with per-batch offsets added), what
:func:`~cellvi.analysis.grn.bagging_ridge` accumulates its normal equations over.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["CountRows", "RowBlocks"]


class CountRows:
    """Log-normalised expression ``log1p(counts / library * library_size)`` computed per row block.

    X: counts (n cells, G genes), scipy sparse or an anndata backed sparse dataset (read into memory,
    still sparse, when its ``nnz x 8`` bytes are at most ``sparse_bytes``; else row slices and sorted
    integer arrays are read from the file); library: (n,) effective library of each cell (see
    :func:`~cellvi.analysis.grn.size_factors`). Indexing ``rows[idx]`` gives a dense float32
    (len(idx), G) array in the order of ``idx`` (duplicates allowed).
    """

    def __init__(self, X, library: np.ndarray, library_size: float = 1e4, block: int = 8192, sparse_bytes: float = 2e9):
        group = getattr(X, "group", None)  # an anndata backed sparse dataset
        if group is not None and group["data"].shape[0] * 8 <= sparse_bytes:
            # the transitions read each cell's neighbours, scattered over the file (~0.1 ms a row from
            # HDF5 here, 20x a contiguous read): the sparse counts are read once into memory when they fit
            X = X.to_memory()
        self.X, self.block = X, block
        self.scale = (library_size / np.asarray(library, dtype=np.float64)).astype(np.float32)
        self.shape = tuple(X.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        uniq, inverse = np.unique(idx, return_inverse=True)
        out = np.empty((len(uniq), self.shape[1]), dtype=np.float32)
        for lo in range(0, len(uniq), self.block):
            u = uniq[lo : lo + self.block]
            part = self.X[u] if len(u) < u[-1] - u[0] + 1 else self.X[int(u[0]) : int(u[-1]) + 1]
            part = sp.csr_matrix(part, dtype=np.float32)
            out[lo : lo + len(u)] = np.log1p((sp.diags(self.scale[u]) @ part).toarray())
        return out[inverse]


class RowBlocks:
    """The cells ``rows`` of ``source`` (an array or :class:`CountRows`) as consecutive dense blocks.

    offsets: (levels, G) added to each cell's row by its ``groups`` entry (e.g. removing batch offsets),
    or None. ``shape`` is (len(rows), G); iterating yields float32 blocks of at most ``block`` cells.
    """

    def __init__(self, source, rows: np.ndarray, offsets=None, groups=None, block: int = 8192):
        self.source, self.rows, self.block = source, np.asarray(rows), block
        self.offsets, self.groups = offsets, groups
        self.shape = (len(self.rows), source.shape[1])

    def __iter__(self):
        for lo in range(0, len(self.rows), self.block):
            x = np.asarray(self.source[self.rows[lo : lo + self.block]], dtype=np.float32)
            if self.offsets is not None:
                x += self.offsets[self.groups[lo : lo + self.block]]
            yield x

    def mean_by_group(self) -> tuple[np.ndarray, np.ndarray]:
        """(G,) mean over all rows and (levels, G) mean per group, in one pass (float64)."""
        levels = int(self.groups.max()) + 1
        s = np.zeros((levels, self.shape[1]))
        cnt = np.bincount(self.groups, minlength=levels).astype(np.float64)
        for lo, x in zip(range(0, len(self.rows), self.block), self):
            g = self.groups[lo : lo + len(x)]
            s += sp.csr_matrix((np.ones(len(x)), (g, np.arange(len(x)))), shape=(levels, len(x))) @ x
        return s.sum(0) / cnt.sum(), s / np.maximum(cnt, 1)[:, None]
