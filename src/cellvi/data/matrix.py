"""Access to a count matrix whatever its storage: dense, sparse (CSR/CSC), or on disk (backed AnnData).

Everything reads rows in chunks, so that checking a matrix never needs it whole in memory.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp
from scipy.special import gammaln

from ..errors import InvalidDataError, InvalidTypeError, MissingKeyError
from .direct import file_identity

CHUNK_ROWS = 10_000
_LOG_FACTORIAL = gammaln(np.arange(1, 4097, dtype=np.float64)).astype(np.float32)  # lgamma(k + 1), k < 4096


def count_matrix(adata, layer: str | None):
    """``adata.X`` or ``adata.layers[layer]``; raises a clear error when absent."""
    if layer is None:
        X = adata.X
        if X is None:
            raise MissingKeyError("adata.X is empty (None). Pass layer= with the layer holding raw counts.")
        return X
    if layer not in adata.layers:
        raise MissingKeyError(f"Layer {layer!r} is not in adata.layers. Available layers: {list(adata.layers)}.")
    return adata.layers[layer]


def iter_row_chunks(X, chunk_rows: int = CHUNK_ROWS, first: int = 0, end: int | None = None) -> Iterator:
    """Yield consecutive row blocks of ``X`` (scipy sparse or NumPy arrays), of rows ``first:end``."""
    n = X.shape[0] if end is None else end
    if sp.issparse(X) and not (sp.isspmatrix_csr(X) or isinstance(X, sp.csr_array)):
        X = sp.csr_matrix(X)
    csr = sp.isspmatrix_csr(X) or isinstance(X, sp.csr_array)
    for start in range(first, n, chunk_rows):
        stop = min(start + chunk_rows, n)
        if csr:  # views of the three arrays: scipy's slicing may cast the whole index array first
            a, b = X.indptr[start], X.indptr[stop]
            ptr = X.indptr[start : stop + 1] - a
            yield sp.csr_matrix((X.data[a:b], X.indices[a:b], ptr), shape=(stop - start, X.shape[1]), copy=False)
        else:
            yield X[start:stop]


def sample_rows(n: int, size: int, seed: int) -> np.ndarray:
    """Sorted indices of ``size`` of ``n`` rows drawn without replacement (all rows when n <= size)."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def _values(chunk) -> np.ndarray:
    if sp.issparse(chunk):
        return np.asarray(chunk.data)
    return np.asarray(chunk)


def validate_counts_chunk(chunk, first_row: int, layer: str | None) -> None:
    """Raise :class:`InvalidDataError` unless the block holds finite, non-negative integer counts."""
    where = f"adata.layers[{layer!r}]" if layer else "adata.X"
    values = _values(chunk)
    if values.dtype == bool or not np.issubdtype(values.dtype, np.number):
        raise InvalidTypeError(f"{where} has dtype {values.dtype}; raw counts must be numeric.")
    if np.issubdtype(values.dtype, np.complexfloating):
        raise InvalidTypeError(f"{where} has complex values; raw counts must be real integers.")
    if values.size:
        low, high = values.min(), values.max()  # two reductions, no temporary arrays
        if (
            np.isfinite(low)
            and np.isfinite(high)
            and low >= 0
            and (not np.issubdtype(values.dtype, np.floating) or np.array_equal(values, np.rint(values)))
        ):
            return  # the common case, checked in ~3 passes; the slow checks below name the problem
    if np.issubdtype(values.dtype, np.floating):
        bad = ~np.isfinite(values)
        if bad.any():
            raise InvalidDataError(
                f"{where} has {int(bad.sum())} NaN or infinite values (first block at cell {first_row}). "
                "cellvi needs raw counts: remove or fix those cells."
            )
    if (values < 0).any():
        raise InvalidDataError(
            f"{where} has {int((values < 0).sum())} negative values (first block at cell {first_row}). "
            "cellvi models raw counts, which are >= 0; pass the raw counts (for example layer='counts')."
        )
    if np.issubdtype(values.dtype, np.floating):
        frac = values != np.round(values)
        if frac.any():
            example = float(values[frac][0])
            raise InvalidDataError(
                f"{where} has {int(frac.sum())} non-integer values (e.g. {example:g}) from cell {first_row} on. "
                "It looks normalised or log-transformed; cellvi needs raw counts (for example layer='counts')."
            )


def row_log_factorial(values: np.ndarray, rows: np.ndarray, n_rows: int) -> np.ndarray:
    """Per-row sum of ``lgamma(x + 1)`` over the non-zero counts ``values`` of rows ``rows`` (sorted),
    (n_rows,) float32: the likelihoods' constant term, from a table for counts below 4096 and ``gammaln``
    for the few above (evaluating ``gammaln`` on every entry once one count is large cost ~7 ms per
    minibatch of 1024 cells x 2,000 genes, ~6% of a training step)."""
    k = values.astype(np.int32)
    beyond = k >= len(_LOG_FACTORIAL)
    terms = np.take(_LOG_FACTORIAL, np.minimum(k, len(_LOG_FACTORIAL) - 1))
    if beyond.any():
        terms[beyond] = gammaln(values[beyond].astype(np.float64) + 1)
    starts = np.searchsorted(rows, np.arange(n_rows))
    sums = np.add.reduceat(np.append(terms, 0), starts, dtype=np.float64)  # the 0 ends the last rows
    sums[np.diff(np.append(starts, len(terms))) == 0] = 0.0  # reduceat gives an empty row the next element
    return sums.astype(np.float32)


def cell_log_factorial(X, rows: np.ndarray, chunk_entries: int = 1 << 22) -> np.ndarray | None:
    """Per-cell sums of ``lgamma(x + 1)`` of the cells ``rows`` of an in-memory CSR or dense matrix
    ``X``: a (n_cells,) float32 array indexed by cell position, 0 at cells not in ``rows``. None for any
    other matrix (on-disk rows are summed per minibatch). Each cell is gathered and summed as a
    minibatch's are (:func:`gather_csr` or :func:`gather_rows`, then :func:`row_log_factorial`), so the
    values are the same bit for bit; ``rows`` go in chunks of about ``chunk_entries`` cells x genes."""
    if not (sp.isspmatrix_csr(X) or isinstance(X, (sp.csr_array, np.ndarray))):
        return None
    out = np.zeros(X.shape[0], dtype=np.float32)
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    step = max(1, chunk_entries // max(1, X.shape[1]))
    for start in range(0, len(rows), step):
        part = rows[start : start + step]
        if isinstance(X, np.ndarray):
            _, nz_rows, _, values = gather_rows(X, part)
        else:
            indptr, _, values = gather_csr(X, part)
            nz_rows = np.repeat(np.arange(len(part), dtype=np.int64), np.diff(indptr))
        out[part] = row_log_factorial(values, nz_rows, len(part))
    return out


class RowBlocks:
    """CSR blocks of rows used as one matrix (n_rows, n_genes) without stacking them: what a shuffling
    on-disk buffer gathers its minibatches from. ``X[rows]`` and the gathers below take sorted rows."""

    def __init__(self, blocks: list) -> None:
        self.blocks = [b for b in blocks if b.shape[0]] or list(blocks[:1])
        self.starts = np.cumsum([0] + [b.shape[0] for b in self.blocks])
        self.shape = (int(self.starts[-1]), int(blocks[0].shape[1]))

    def split(self, rows: np.ndarray) -> list[tuple]:
        """``(block, rows within it)`` for the sorted positions ``rows``, blocks in order."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) > 1 and np.any(rows[1:] < rows[:-1]):
            raise ValueError("RowBlocks takes sorted rows")
        if not len(rows):
            return []
        first, last = np.searchsorted(self.starts, [rows[0], rows[-1]], side="right") - 1
        if first == last:  # the common case in file order
            return [(self.blocks[first], rows - self.starts[first])]
        parts = np.split(rows, np.searchsorted(rows, self.starts[first + 1 : last + 1]))
        return [(self.blocks[first + i], p - self.starts[first + i]) for i, p in enumerate(parts) if len(p)]

    def __getitem__(self, rows) -> sp.csr_matrix:
        pieces = [sp.csr_matrix(b[local]) for b, local in self.split(rows)]
        return pieces[0] if len(pieces) == 1 else sp.vstack(pieces, format="csr")


class FileRows:
    """Rows of an on-disk CSR matrix whose entries are read only when gathered, (n_rows, n_genes).

    ``starts``, ``ends``: (n_rows,) int64 positions of each row's entries in the file's ``data`` and
    ``indices`` arrays (1-D, read by slices, such as :class:`~cellvi.data.direct.FileArray`); ``rows``:
    (n_rows,) the rows' positions in the file (sorted); ``check(values, first_row)``: raises on values
    that are not counts (None: the file was checked already); ``max_gap``: rows of the file between two
    wanted rows that are read through rather than starting a new read. Each gather reads only the
    entries of its rows, into new arrays that the caller owns: in file order, one read per minibatch,
    small enough to still be in cache when the model reads it.
    """

    def __init__(
        self,
        starts: np.ndarray,
        ends: np.ndarray,
        data,
        indices,
        n_genes: int,
        rows: np.ndarray,
        check=None,
        max_gap: int = 64,
    ) -> None:
        self.starts, self.ends, self.data, self.indices = starts, ends, data, indices
        self.rows, self.check, self.max_gap = rows, check, max_gap
        self.shape = (len(starts), int(n_genes))

    def gather(self, local: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Entries per row (int64), columns and float32 values of the sorted rows ``local``, row by row:
        one read per run of nearby rows, from the run's first entry to its last (rows in between that
        were not asked for are read through and dropped)."""
        cut = np.flatnonzero(np.diff(self.rows[local]) > self.max_gap) + 1
        if len(cut):
            parts = [self.gather(run) for run in np.split(local, cut)]
            return tuple(np.concatenate(p) for p in zip(*parts))  # type: ignore[return-value]
        starts, ends = self.starts[local], self.ends[local]
        lengths = ends - starts
        if not len(local):
            return lengths, np.empty(0, np.int32), np.empty(0, np.float32)
        lo, hi = int(starts[0]), int(ends[-1])
        values = np.asarray(self.data[lo:hi]).astype(np.float32, copy=False)
        cols = np.asarray(self.indices[lo:hi])
        if int(lengths.sum()) != hi - lo:  # other rows' entries in between
            pos = _entry_positions(starts - lo, lengths)
            values, cols = values[pos], cols[pos]
        if self.check is not None:
            self.check(values, int(self.rows[local[0]]))
        return lengths, cols, values

    def __getitem__(self, local) -> sp.csr_matrix:
        local = np.asarray(local, dtype=np.int64)
        lengths, cols, values = self.gather(local)
        indptr = np.concatenate([[0], np.cumsum(lengths)])
        return sp.csr_matrix((values, cols, indptr), shape=(len(local), self.shape[1]))


def _is_csr(X) -> bool:
    return sp.isspmatrix_csr(X) or isinstance(X, (sp.csr_array, RowBlocks, FileRows))


def gather_rows(X, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows ``rows`` of ``X`` densified, with the coordinates and values of their non-zeros (see
    :func:`densify`).

    For an in-memory CSR matrix the rows are gathered straight from its three arrays: scipy's fancy
    row indexing casts the whole index array when ``indptr`` and ``indices`` differ in dtype (as in
    h5ad files with 64-bit ``indptr``), which costs a pass over every non-zero of the matrix per call.
    """
    if not _is_csr(X):
        return densify(X[rows])
    indptr, cols, values = gather_csr(X, rows)
    local_rows = np.repeat(np.arange(len(rows), dtype=np.int64), np.diff(indptr))
    return csr_dense(indptr, cols, values, X.shape[1]), local_rows, cols.astype(np.int64), values


def csr_dense(indptr: np.ndarray, cols: np.ndarray, values: np.ndarray, n_genes: int) -> np.ndarray:
    """The dense float32 (len(indptr) - 1, n_genes) array of CSR rows (scipy's compiled loop: ~3.5x
    faster than NumPy's scattered writes into zeros, on 1,024 x 2,000)."""
    shape = (len(indptr) - 1, n_genes)
    return sp.csr_matrix((values, cols, indptr), shape=shape, copy=False).toarray()


def _gathered(X, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Entries per row, and column (the matrix's own integer type) and value of every stored entry of
    the rows ``rows`` of the CSR matrix ``X`` (row by row), read straight from its three arrays (see
    :func:`gather_rows`)."""
    if isinstance(X, RowBlocks):
        parts = [_gathered(block, local) for block, local in X.split(rows)]
        if len(parts) == 1:
            return parts[0]
        return tuple(np.concatenate(p) for p in zip(*parts))  # type: ignore[return-value]
    if isinstance(X, FileRows):
        return X.gather(rows)
    if len(rows) and rows[0] >= 0 and rows[-1] - rows[0] + 1 == len(rows) and np.all(np.diff(rows) == 1):
        a, b = int(X.indptr[rows[0]]), int(X.indptr[rows[-1] + 1])  # consecutive rows: plain slices
        lengths = np.diff(X.indptr[rows[0] : rows[-1] + 2]).astype(np.int64)
        values, cols = X.data[a:b], X.indices[a:b]
    elif X.indptr.dtype == X.indices.dtype:  # scipy's row gather (one compiled loop) casts nothing then
        block = X[rows]  # ~2.7x faster than the NumPy gathers below (a shuffled on-disk minibatch)
        lengths, values, cols = np.diff(block.indptr).astype(np.int64), block.data, block.indices
    else:
        starts, ends = X.indptr[rows], X.indptr[rows + 1]
        lengths = (ends - starts).astype(np.int64)
        pos = _entry_positions(starts, lengths)
        values, cols = X.data[pos], X.indices[pos]
    return lengths, cols, values


def _entry_positions(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Positions (int64) of the entries of rows whose entries start at ``starts`` and number
    ``lengths``, row by row, in the arrays that hold them."""
    first = np.cumsum(lengths) - lengths  # where each row's entries start in the gathered arrays
    return np.repeat(starts.astype(np.int64) - first, lengths) + np.arange(int(lengths.sum()), dtype=np.int64)


def gather_csr(X, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows ``rows`` of ``X`` as CSR arrays, never densified: row pointers (len(rows) + 1,), column
    indices and float32 values of the non-zeros (explicitly stored zeros dropped). The row pointers and
    column indices share one integer type, int32 (int64 from 2**31 non-zeros on), as the model's sparse
    first layer takes them: a matrix's own int32 indices are then used without a copy."""
    if not _is_csr(X):
        block = sp.csr_matrix(X[rows])
        block.eliminate_zeros()
        indptr, cols, values = block.indptr, block.indices, block.data
    else:
        lengths, cols, values = _gathered(X, rows)
        keep = values != 0
        if not keep.all():  # explicitly stored zeros: dropped, and the row lengths counted again
            local_rows = np.repeat(np.arange(len(rows), dtype=np.int64), lengths)
            lengths = np.bincount(local_rows[keep], minlength=len(rows))
            cols, values = cols[keep], values[keep]
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
    index = np.int32 if len(values) < 2**31 else np.int64
    return indptr.astype(index, copy=False), cols.astype(index, copy=False), values.astype(np.float32, copy=False)


def densify(block) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A block of rows as a dense float32 array (n_rows, n_genes), with the row and column indices
    (int64, row-major) of its non-zero entries, which the likelihoods use to skip the zeros, and their
    values."""
    if sp.issparse(block):
        block = sp.csr_matrix(block)
        keep = block.data != 0  # explicit zeros stored in the sparse structure are zeros
        rows = np.repeat(np.arange(block.shape[0], dtype=np.int64), np.diff(block.indptr))[keep]
        cols = block.indices[keep].astype(np.int64)
        return block.toarray().astype(np.float32, copy=False), rows, cols, block.data[keep]
    dense = np.asarray(block, dtype=np.float32)
    rows, cols = np.nonzero(dense)
    return dense, rows.astype(np.int64), cols.astype(np.int64), dense[rows, cols]


_CHECKED_FILES: set[tuple] = set()  # fingerprints of on-disk count matrices checked in this process


def file_fingerprint(X) -> tuple | None:
    """Identity of an on-disk h5ad count matrix as it is now: (device, inode, size, modification time
    in ns, dataset path), from the open file's descriptor; None for anything else (in memory, zarr,
    a file-like object). Any change to the file gives another fingerprint."""
    import h5py
    from anndata.abc import CSRDataset

    node = X.group if isinstance(X, CSRDataset) else X
    return file_identity(node) if isinstance(node, (h5py.Dataset, h5py.Group)) else None


def mark_counts_checked(X) -> None:
    """Record that every chunk of the on-disk matrix ``X`` passed :func:`validate_counts_chunk`."""
    key = file_fingerprint(X)
    if key is not None:
        _CHECKED_FILES.add(key)


def counts_checked(X) -> bool:
    """True when the on-disk matrix ``X`` was checked in this process and its file has not changed since."""
    key = file_fingerprint(X)
    return key is not None and key in _CHECKED_FILES


def is_on_disk(X) -> bool:
    """True for matrices whose values stay on disk: a backed AnnData's ``X`` (h5py or zarr CSR/CSC
    dataset of anndata) or a dense h5py / zarr array."""
    from anndata.abc import CSCDataset, CSRDataset

    if isinstance(X, (CSRDataset, CSCDataset)):
        return True
    try:
        import h5py

        if isinstance(X, h5py.Dataset):
            return True
    except ImportError:  # pragma: no cover
        pass
    try:
        import zarr

        return isinstance(X, zarr.Array)
    except ImportError:  # pragma: no cover
        return False
