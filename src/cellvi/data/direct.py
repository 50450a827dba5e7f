"""Direct reads of uncompressed HDF5 arrays: their stored bytes read from the file with ``os.preadv``.

Reading a slice through h5py costs a fixed overhead per call and copies through HDF5's own buffers. A
memory map of the same bytes (what cellvi used before) has its pages populated and mapped first (~0.15 s
per million cells of 2,000 genes here), and the model's passes over mapped values were slower than over
a copy, so the values were copied off the map anyway. Here the kernel copies the bytes of a slice
straight from the page cache into an ordinary array, one ``preadv`` call per run of stored bytes: the
array is the caller's own (writable, no tie to the file), and a reader that asks for one minibatch at a
time gets arrays small enough to stay in cache while the model reads them.

This applies to a 1-D dataset stored without filters (no compression), in native byte order, in a file
opened read-only with HDF5's default driver, as ``anndata`` writes the ``data``, ``indices`` and
``indptr`` arrays of a sparse ``X``. For anything else :func:`direct_or_none` returns ``None`` and the
caller reads through h5py.

The file addresses come from HDF5 itself (``get_offset`` for contiguous storage; one ``chunk_iter``
pass for chunked storage, where runs of chunks that follow each other in the file form one extent).
Nothing is ever written to the file: it is only read, through a duplicate of HDF5's read-only descriptor.
"""

from __future__ import annotations

import os
import weakref

import numpy as np

from ..errors import InvalidDataError

_CHECKED_EXTENTS = 16  # extents whose first and last 64 elements are compared with h5py's reads
_EXTENTS: dict[tuple, tuple | None] = {}  # file identity -> extents of a dataset (see _cached_extents)


class FileArray:
    """A 1-D HDF5 dataset read by slices (``a[start:stop]``, a new array) straight from its file.

    ``fd``: a descriptor of the file, duplicated here (so reads stay on this file even after the caller
    closes it); ``starts``: (n_extents + 1,) first element of each extent (the last entry is the
    length); ``offsets``: (n_extents,) byte address of each extent in the file.
    """

    def __init__(self, fd: int, dtype: np.dtype, starts: np.ndarray, offsets: np.ndarray) -> None:
        self.fd, self.dtype = os.dup(fd), np.dtype(dtype)
        weakref.finalize(self, os.close, self.fd)
        self.starts, self.offsets = starts, offsets
        self.shape = (int(starts[-1]),)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: slice) -> np.ndarray:
        start, stop, step = key.indices(len(self))
        if step != 1:
            raise IndexError("FileArray reads contiguous slices only")
        out = np.empty(max(stop - start, 0), self.dtype)
        if stop <= start:
            return out
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        last = int(np.searchsorted(self.starts, stop - 1, side="right")) - 1
        for e in range(first, last + 1):
            a, b = max(start, int(self.starts[e])), min(stop, int(self.starts[e + 1]))
            address = int(self.offsets[e]) + (a - int(self.starts[e])) * self.dtype.itemsize
            self._read(out[a - start : b - start], address)
        return out

    def _read(self, out: np.ndarray, address: int) -> None:
        """Fill ``out`` with the bytes of the file at ``address`` (a read may return fewer bytes)."""
        view = memoryview(out).cast("B")
        done = 0
        while done < len(view):
            n = os.preadv(self.fd, [view[done:]], address + done)
            if n == 0:
                raise InvalidDataError(
                    f"The file ended {len(view) - done} bytes short of an array's stored data: it was truncated "
                    "or rewritten while being read."
                )
            done += n


def _extents(ds) -> tuple[np.ndarray, np.ndarray] | None:
    """(starts, offsets) of the runs of ``ds``'s bytes in its file, or None if some part is not
    stored plainly (a chunk not written, or filtered)."""
    n, itemsize = int(ds.shape[0]), ds.dtype.itemsize
    if ds.chunks is None:
        offset = ds.id.get_offset()
        return None if offset is None else (np.array([0, n]), np.array([offset]))
    info: list[tuple[int, int, int]] = []

    def visit(chunk) -> None:
        info.append((chunk.chunk_offset[0], chunk.byte_offset, chunk.filter_mask))

    ds.id.chunk_iter(visit)
    if not info:
        return None
    table = np.array(sorted(info), dtype=np.int64)
    first, address, mask = table[:, 0], table[:, 1], table[:, 2]
    step = ds.chunks[0]
    if np.any(mask != 0) or first[0] != 0 or np.any(np.diff(first) != step) or first[-1] + step < n:
        return None
    # a chunk continues the extent when it starts where the chunk before it ends in the file
    new_run = np.concatenate([[True], address[1:] != address[:-1] + step * itemsize])
    return np.append(first[new_run], n), address[new_run]


def local_file_descriptor(node) -> int | None:
    """The OS descriptor of the file of the h5py object ``node`` when it is a plain local file (HDF5's
    default driver), else None (another driver, a file-like object, or a closed file)."""
    try:
        f = node.file
        return int(f.id.get_vfd_handle()) if f.driver == "sec2" else None
    except Exception:  # a closed file, or an h5py without the call
        return None


def file_identity(node) -> tuple | None:
    """(device, inode, size, modification time in ns, object path) of the h5py object ``node`` in a
    plain local file, as the file is now (any change to the file gives another tuple); else None."""
    fd = local_file_descriptor(node)
    if fd is None:
        return None
    st = os.fstat(fd)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, node.name


def _cached_extents(ds) -> tuple[np.ndarray, np.ndarray] | None:
    """:func:`_extents` of ``ds``, kept for the process while its file is unchanged: finding the
    extents walks every chunk (~15 ms per array at 1M cells, ~0.15 s at 10M), and each loader, so
    each inference call, opens the file's arrays anew."""
    key = file_identity(ds)
    if key is None or key not in _EXTENTS:
        extents = _extents(ds)
        if key is None:
            return extents
        if len(_EXTENTS) >= 64:
            _EXTENTS.clear()
        _EXTENTS[key] = extents
    return _EXTENTS[key]


def direct_or_none(ds) -> FileArray | None:
    """A :class:`FileArray` over the h5py dataset ``ds``, or None where reads must go through h5py."""
    try:
        import h5py
    except ImportError:  # pragma: no cover - anndata depends on h5py
        return None
    if not isinstance(ds, h5py.Dataset) or ds.ndim != 1 or len(ds) == 0:
        return None
    f = ds.file
    fd = local_file_descriptor(ds)
    if fd is None or f.mode != "r" or f.userblock_size != 0 or not hasattr(os, "preadv"):
        return None  # not a plain local file, or writable (HDF5 may hold unwritten data)
    if ds.id.get_create_plist().get_nfilters() != 0 or ds.dtype.kind not in "iuf":
        return None
    if not ds.dtype.isnative or ds.dtype.itemsize not in (4, 8):
        return None
    try:
        extents = _cached_extents(ds)
    except Exception:  # an h5py or HDF5 without chunk_iter
        return None
    if extents is None:
        return None
    direct = FileArray(fd, ds.dtype, *extents)
    # guard against any misreading of the layout: the ends of extents spread over the file must
    # equal h5py's reads of the same elements
    starts = extents[0]
    for e in np.unique(np.linspace(0, len(starts) - 2, _CHECKED_EXTENTS).astype(int)):
        a, b = int(starts[e]), int(starts[e + 1])
        for lo, hi in ((a, min(a + 64, b)), (max(b - 64, a), b)):
            if not np.array_equal(direct[lo:hi], ds[lo:hi]):
                return None
    return direct
