"""Out-of-core minibatches: train and infer on count matrices that stay on disk.

:class:`OnDiskLoader` has the interface of :class:`~cellvi.data.MinibatchLoader` (iterates dicts of
tensors; ``set_epoch``; ``len``) but never holds the whole matrix. It reads *chunks*: runs of cells
that lie within ``chunk_size`` consecutive rows of the on-disk CSR matrix, each read with one slice of
``indptr`` and slices of ``data`` / ``indices``: zarr or h5py reads, or, for an uncompressed h5ad opened
read-only (what ``anndata`` writes by default), reads of the stored bytes straight from the file
(:mod:`cellvi.data.direct`). The blocks read are never stacked: each minibatch gathers its rows from
them. When shuffling, each chunk is read whole into memory; in file order (inference, validation), a
file read directly is read one minibatch at a time, as the minibatches gather their rows. A file that
``setup_anndata`` checked in this process, unchanged since (same inode, size and modification time),
is not checked again while it is read; any other on-disk matrix is checked chunk by chunk as it is
read (non-negative integer counts). When the machine has a core
to spare (more cores than torch threads), a background thread reads the next *buffer*
(``buffer_chunks`` chunks) while minibatches of the current one are trained on; otherwise the reads
happen between steps: a reader thread on a core that torch's threads need makes every operation wait
at its thread barrier (on a 2-core machine, 2-thread torch ran many times slower under any other CPU
load), and for inference from 1M cells on 2 cores reading ahead measured no faster.

Randomness trade-off
--------------------
Full shuffling (each minibatch a uniform draw of all cells) needs random access to single rows, which
is slow on disk. Here an epoch visits the chunks in a random order (``default_rng([seed, epoch])``),
and the cells of each buffer of ``buffer_chunks`` chunks are shuffled together. A minibatch therefore
mixes cells of up to ``buffer_chunks`` random places in the file. When the file's rows are in random
order (as from :func:`cellvi.data.simulate`) this is as good as full shuffling; when the rows are
sorted (by batch, sample or cell type) minibatches are less diverse than under full shuffling, which
can slow training or bias it towards the chunks seen last. Larger ``buffer_chunks`` (more memory) or a
file whose rows were shuffled once on writing fix that.

Memory: about ``2 * buffer_chunks * chunk_size * (nnz per cell) * 8`` bytes (a buffer in use and one
being read; float32 values + int32 column indices), e.g. ~250 MB at the defaults for 2,000 genes and
12% non-zeros; independent of the number of cells.

Shards: with ``n_shards`` processes (data-parallel ranks, :mod:`cellvi.train.distributed`) each passes
its ``shard_index`` and reads, of every chunk, only its ``shard_index``-th of ``n_shards`` contiguous
near-equal slices, in the epoch's shared chunk order: a process reads only its own rows, the shards
are disjoint and cover every cell, and each buffer of a process mixes the same chunks as the others'
(so the union of the processes' minibatches is drawn as one process's would be). ``batch_size`` is the
global minibatch: every shard takes the same number of steps per epoch (that of ``batch_size`` over
all shards' cells), each of about ``batch_size / n_shards`` of its cells.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import scipy.sparse as sp
import torch

from ..errors import InvalidDataError, InvalidParameterError
from .direct import FileArray, direct_or_none
from .loaders import MinibatchLoader, check_shards, minibatch_slices, prefetch, share
from .matrix import FileRows, RowBlocks, is_on_disk, validate_counts_chunk  # noqa: F401 (is_on_disk re-exported)
from .registry import CellData

CHUNK_SIZE = 16_384
BUFFER_CHUNKS = 4
MAX_GAP = 64  # unwanted rows read through rather than starting a new read


def open_zarr(path):
    """Open an AnnData zarr store with ``X`` left on disk (a lazy anndata CSR dataset) and ``obs``,
    ``var`` and ``uns`` read into memory; the store is opened read-only. Use it like
    ``anndata.read_h5ad(path, backed="r")``: ``SCVI.setup_anndata(open_zarr(path))``."""
    import anndata as ad
    import zarr
    from anndata.io import read_elem, sparse_dataset

    root = zarr.open_group(str(path), mode="r")
    node = root["X"]
    X = sparse_dataset(node) if isinstance(node, zarr.Group) else node
    uns = read_elem(root["uns"]) if "uns" in root else {}
    return ad.AnnData(X=X, obs=read_elem(root["obs"]), var=read_elem(root["var"]), uns=uns)


class RowReader:
    """Reads sorted rows of an on-disk (or in-memory) matrix as float32 CSR, (len(rows), n_genes)."""

    def __init__(self, X, layer: str | None = None, validate: bool = True) -> None:
        from anndata.abc import CSCDataset, CSRDataset

        if isinstance(X, CSCDataset) or (sp.issparse(X) and X.format != "csr"):
            raise InvalidDataError(
                "The on-disk count matrix is CSC (column-major): reading cells from it means reading every "
                "gene's column. Rewrite it as CSR (for example adata = anndata.read_h5ad(path); "
                "adata.X = adata.X.tocsr(); adata.write_h5ad(new_path)) to train from disk."
            )
        self.X, self.layer, self.validate = X, layer, validate
        self.n_genes = int(X.shape[1])
        self.parts = None
        if isinstance(X, CSRDataset):
            g = X.group
            # read straight from the file where the arrays are stored plainly (see cellvi.data.direct)
            self.parts = tuple(_direct_or_dataset(g[k]) for k in ("indptr", "data", "indices"))
        self.direct = self.parts is not None and all(isinstance(a, FileArray) for a in self.parts)

    def read(self, rows: np.ndarray) -> sp.csr_matrix:
        """Rows ``rows`` (sorted; runs of nearby rows are read with one slice each) as CSR float32 with
        int32 indices."""
        blocks = self.read_blocks(rows)
        return blocks[0][1] if len(blocks) == 1 else sp.vstack([b for _, b in blocks], format="csr")

    def read_blocks(self, rows: np.ndarray) -> list[tuple[np.ndarray, sp.csr_matrix]]:
        """Rows ``rows`` (sorted) as consecutive blocks ``(positions, CSR)``, one per run of nearby rows."""
        if self.parts is None:  # dense on disk, or any in-memory matrix
            lo, hi = int(rows[0]), int(rows[-1]) + 1
            blocks = [(rows, sp.csr_matrix(self.X[lo:hi], dtype=np.float32)[rows - lo])]
        else:
            blocks = self._read_csr(rows)
        if self.validate:
            for positions, block in blocks:
                validate_counts_chunk(block, int(positions[0]), self.layer)
        return blocks

    def lazy_blocks(self, rows: np.ndarray) -> list[tuple[np.ndarray, FileRows | sp.csr_matrix]]:
        """Rows ``rows`` (sorted) as one block whose entries are read when a minibatch gathers them
        (:class:`FileRows`: in file order, one read per minibatch), where the arrays are read straight
        from the file; otherwise as :meth:`read_blocks`."""
        if not self.direct:
            return self.read_blocks(rows)
        indptr = self.parts[0][int(rows[0]) : int(rows[-1]) + 2].astype(np.int64, copy=False)
        local = rows - rows[0]
        check = (lambda values, first: validate_counts_chunk(values, first, self.layer)) if self.validate else None
        block = FileRows(indptr[local], indptr[local + 1], *self.parts[1:], self.n_genes, rows, check, MAX_GAP)
        return [(rows, block)]

    def _read_csr(self, rows: np.ndarray) -> list[tuple[np.ndarray, sp.csr_matrix]]:
        indptr_ds, data_ds, indices_ds = self.parts
        lo = int(rows[0])
        indptr = np.asarray(indptr_ds[lo : int(rows[-1]) + 2], dtype=np.int64)
        cut = np.flatnonzero(np.diff(rows) > MAX_GAP) + 1  # one read per run of nearby rows
        blocks = []
        for run in np.split(rows, cut):
            a, b = int(run[0]) - lo, int(run[-1]) - lo + 1
            p0, p1 = int(indptr[a]), int(indptr[b])
            data = np.asarray(data_ds[p0:p1], dtype=np.float32)
            cols = np.asarray(indices_ds[p0:p1], dtype=np.int32)
            ptr = (indptr[a : b + 1] - p0).astype(np.int32 if p1 - p0 < 2**31 else np.int64)
            m = sp.csr_matrix((data, cols, ptr), shape=(b - a, self.n_genes))
            blocks.append((run, m) if len(run) == b - a else (run, m[run - lo - a]))
        return blocks


def _direct_or_dataset(ds):
    direct = direct_or_none(ds)
    return ds if direct is None else direct


def _sorted_unique(indices) -> np.ndarray:
    """``np.unique`` of the positions, without its sort when they already increase."""
    indices = np.asarray(indices, dtype=np.int64)
    if len(indices) < 2 or bool(np.all(indices[1:] > indices[:-1])):
        return indices
    return np.unique(indices)


def plan_chunks(indices: np.ndarray, chunk_size: int = CHUNK_SIZE) -> list[np.ndarray]:
    """Split sorted cell positions into chunks, each within ``chunk_size`` consecutive rows."""
    bounds, i = [0], 0
    while i < len(indices):
        i = int(np.searchsorted(indices, indices[i] + chunk_size, side="left"))
        bounds.append(i)
    return [indices[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def chunk_split(n: int, n_train: int, n_val: int, seed: int, n_blocks: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Train / validation split of ``n`` on-disk cells by contiguous blocks of rows.

    The rows are cut into about ``n_blocks`` equal blocks (at most :data:`CHUNK_SIZE` rows each); a
    random set of blocks (``default_rng([seed, 1])``) holding ``n_val`` cells is the validation set and
    the others are the training set (``n_train`` cells when ``n_train + n_val = n``; otherwise the first
    ``n_train`` cells of the remaining blocks in random block order). Each side is then read in long
    contiguous runs; the price is that validation cells are whole blocks, not single random cells, which
    matters only if the file's row order is not random. Returns sorted (train, validation) positions.
    """
    size = int(min(CHUNK_SIZE, max(1, -(-n // n_blocks))))
    starts = np.arange(0, n, size)
    order = np.random.default_rng([seed, 1]).permutation(len(starts))
    cells = np.concatenate([np.arange(s, min(s + size, n)) for s in starts[order]])
    val = np.sort(cells[len(cells) - n_val :]) if n_val else np.array([], dtype=np.int64)
    return np.sort(cells[:n_train]), val


def _take(d: CellData, rows: np.ndarray, X=None) -> CellData:
    """The cells ``rows`` of ``d`` (``X`` given when already read)."""
    opt = lambda a: None if a is None else a[rows]  # noqa: E731
    return replace(
        d,
        X=d.X[rows] if X is None else X,
        batch=d.batch[rows],
        labels=d.labels[rows],
        cat_covs=opt(d.cat_covs),
        cont_covs=opt(d.cont_covs),
        size_factor=opt(d.size_factor),
        obs_names=None,
    )


def _concat(a: CellData, b: CellData, X) -> CellData:
    """The cells of ``a`` then ``b``, whose count rows are already stacked in ``X``."""
    opt = lambda x, y: None if x is None else np.concatenate([x, y])  # noqa: E731
    return CellData(
        X,
        np.concatenate([a.batch, b.batch]),
        np.concatenate([a.labels, b.labels]),
        opt(a.cat_covs, b.cat_covs),
        opt(a.cont_covs, b.cont_covs),
        opt(a.size_factor, b.size_factor),
    )


class OnDiskLoader:
    """Minibatches of the cells ``indices`` of ``data`` read chunk by chunk (see the module notes).

    Parameters
    ----------
    data
        Encoded arrays; ``data.X`` may be on disk (backed AnnData X, zarr) or in memory.
    indices
        Positions of the cells to visit (default: all); sorted here.
    batch_size, shuffle, seed, device
        As for :class:`~cellvi.data.MinibatchLoader`. Without ``shuffle`` the cells come in order.
    chunk_size
        Rows of the file spanned by one read (cells).
    buffer_chunks
        Chunks shuffled together (and read ahead in the background).
    shard_index, n_shards
        Read only this shard's chunks (see the module notes).
    layer, validate
        Check each chunk read for raw counts (errors name ``adata.layers[layer]``).
    likelihood_terms, sparse_counts, csr_transfer
        As for :class:`~cellvi.data.MinibatchLoader`.
    read_ahead
        Read the next buffer in a background thread. Default: only when ``os.cpu_count()`` exceeds
        ``torch.get_num_threads()`` (see the module notes).
    """

    def __init__(
        self,
        data: CellData,
        indices: np.ndarray | None = None,
        batch_size: int = 128,
        shuffle: bool = False,
        seed: int = 0,
        device: torch.device | str = "cpu",
        chunk_size: int = CHUNK_SIZE,
        buffer_chunks: int = BUFFER_CHUNKS,
        shard_index: int = 0,
        n_shards: int = 1,
        layer: str | None = None,
        validate: bool = True,
        read_ahead: bool | None = None,
        likelihood_terms: bool = True,
        sparse_counts: bool = False,
        csr_transfer: bool = False,
    ) -> None:
        for name, v in [
            ("batch_size", batch_size),
            ("chunk_size", chunk_size),
            ("buffer_chunks", buffer_chunks),
            ("n_shards", n_shards),
        ]:
            if int(v) < 1:
                raise InvalidParameterError(f"{name} must be >= 1, got {v!r}.")
        check_shards(batch_size, shard_index, n_shards)
        self.data = data
        self.indices = np.arange(data.n_cells) if indices is None else _sorted_unique(indices)
        self.batch_size, self.shuffle, self.seed = int(batch_size), shuffle, int(seed)
        self.device = torch.device(device)
        self.buffer_chunks, self.shard_index, self.n_shards = int(buffer_chunks), int(shard_index), int(n_shards)
        self.chunks = plan_chunks(self.indices, int(chunk_size))
        self.reader = RowReader(data.X, layer, validate)
        self.read_ahead = (os.cpu_count() or 1) > torch.get_num_threads() if read_ahead is None else bool(read_ahead)
        self.likelihood_terms, self.sparse_counts = likelihood_terms, sparse_counts
        self.csr_transfer = csr_transfer
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the chunk order and shuffles of epoch ``epoch``."""
        self.epoch = int(epoch)

    def shard_chunks(self) -> list[np.ndarray]:
        """This shard's slices of the chunks, in this epoch's chunk order."""
        order = np.arange(len(self.chunks))
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.chunks))
        k, n = self.shard_index, self.n_shards
        parts = (self.chunks[i][share(len(self.chunks[i]), k, n)] for i in order)
        return [p for p in parts if len(p)]

    def batch_sizes(self) -> list[int]:
        """The sizes of this shard's minibatches in an epoch (the same in every epoch). One process:
        ``batch_size`` each, a trailing single cell merged into the last. Shards: as many steps as
        ``batch_size`` makes of all shards' cells (no more than leaves each shard 2 cells a step), this
        shard's cells spread evenly over them."""
        sizes = [len(c) for c in self.chunks]
        if self.n_shards == 1:
            return [s.stop - s.start for s in minibatch_slices(sum(sizes), self.batch_size)]
        n_sh = self.n_shards
        per_shard = [sum(n * (k + 1) // n_sh - n * k // n_sh for n in sizes) for k in range(n_sh)]
        steps = len(minibatch_slices(sum(sizes), self.batch_size, 2 * self.n_shards))
        steps = min(steps, min(per_shard) // 2)
        mine = per_shard[self.shard_index]
        return np.diff([mine * i // steps for i in range(steps + 1)]).tolist() if steps else []

    def __len__(self) -> int:
        return len(self.batch_sizes())

    def _read_buffer(self, chunks: list[np.ndarray]) -> tuple[np.ndarray, list]:
        """The positions of a buffer's cells and its blocks of rows. When shuffling, each chunk is read
        whole into memory (CSR), and minibatches gather their random rows from it. In file order, from a
        file read directly, a chunk's entries are read only as each minibatch gathers its rows
        (:meth:`RowReader.lazy_blocks`): per minibatch, arrays that are still in cache when the model
        reads them (a whole chunk's were not)."""
        if not self.shuffle:
            return np.concatenate(chunks), [block for c in chunks for _, block in self.reader.lazy_blocks(c)]
        return np.concatenate(chunks), [self.reader.read(c) for c in chunks]

    def _buffer(self, rows: np.ndarray, blocks: list, carry: CellData | None) -> CellData:
        """The cells left over from the last buffer followed by the new ones. The blocks are not
        stacked (:class:`RowBlocks`): each minibatch gathers its rows from them, so in file order a
        minibatch within one block uses the file's bytes where they lie."""
        X = RowBlocks(blocks if carry is None else [carry.X, *blocks])
        new = _take(self.data, rows, X)
        return new if carry is None else _concat(carry, new, X)

    def __iter__(self) -> Iterator[dict]:
        chunks = self.shard_chunks()
        groups = [chunks[i : i + self.buffer_chunks] for i in range(0, len(chunks), self.buffer_chunks)]
        rng = np.random.default_rng([self.seed, self.epoch, self.shard_index, 1])
        sizes, carry = self.batch_sizes(), None
        reads = (self._read_buffer(g) for g in groups)
        for k, (rows, blocks) in enumerate(prefetch(reads, depth=1) if self.read_ahead else reads):
            buf = self._buffer(rows, blocks, carry)
            n = buf.n_cells
            order = rng.permutation(n) if self.shuffle else np.arange(n)
            last = k == len(groups) - 1
            bounds = [0]  # the minibatches this buffer completes (the last buffer: all that remain)
            while sizes and (last or bounds[-1] + sizes[0] <= n):
                bounds.append(bounds[-1] + sizes.pop(0))
            batches = MinibatchLoader(
                buf,
                device=self.device,
                likelihood_terms=self.likelihood_terms,
                sparse_counts=self.sparse_counts,
                csr_transfer=self.csr_transfer,
            )
            for a, b in zip(bounds[:-1], bounds[1:]):
                yield batches.batch(np.sort(order[a:b]))
            rest = np.sort(order[bounds[-1] :]) if not last else order[:0]
            carry = _take(buf, rest) if len(rest) else None
