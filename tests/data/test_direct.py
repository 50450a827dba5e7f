"""Direct reads of h5ad arrays (cellvi.data.direct) and the blocks the on-disk reader builds."""

from __future__ import annotations

import hashlib
import os

import anndata as ad
import h5py
import numpy as np
import pytest
import scipy.sparse as sp

import cellvi
from cellvi.data.direct import FileArray, direct_or_none
from cellvi.data.matrix import FileRows, RowBlocks, counts_checked, gather_csr
from cellvi.data.ondisk import RowReader
from cellvi.errors import InvalidDataError


@pytest.fixture(scope="module")
def sim_path(tmp_path_factory):
    """An h5ad whose X/data and X/indices were appended to in turns, in small chunks, so that each is
    stored in many separate runs of bytes in the file (as large files written in slabs are)."""
    path = tmp_path_factory.mktemp("direct") / "sim.h5ad"
    adata = cellvi.data.simulate(n_cells=5000, n_genes=120, n_batches=2, n_cell_types=3, seed=1)
    adata.write_h5ad(path)
    X = adata.X.tocsr()
    with h5py.File(path, "r+") as f:
        for name in ("data", "indices"):
            del f["X"][name]
            f["X"].create_dataset(name, shape=(0,), maxshape=(None,), chunks=(500,), dtype=getattr(X, name).dtype)
        for a in range(0, X.nnz, 3000):
            for name in ("data", "indices"):
                part = getattr(X, name)[a : a + 3000]
                ds = f["X"][name]
                ds.resize((ds.shape[0] + len(part),))
                ds[-len(part) :] = part
    return path


def _sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_direct_slices_equal_h5py_reads(sim_path, tmp_path):
    plain = tmp_path / "plain.h5"  # contiguous (unchunked) storage too
    with h5py.File(plain, "w") as f:
        f.create_dataset("x", data=np.arange(10_000, dtype=np.int64) * 3)
    rng = np.random.default_rng(0)
    with h5py.File(sim_path, "r") as f, h5py.File(plain, "r") as g:
        datasets = [f["X/data"], f["X/indices"], f["X/indptr"], g["x"]]
        assert len(direct_or_none(f["X/data"]).starts) > 3  # several extents: reads across them are tested
        for ds in datasets:
            m = direct_or_none(ds)
            assert isinstance(m, FileArray) and m.shape == ds.shape
            n = len(ds)
            cuts = [int(c) for c in m.starts] + [int(c) for c in rng.integers(0, n, 40)]
            for a in cuts:
                for b in (a, a + 1, a + 17, a + int(rng.integers(0, n)), n):
                    b = min(b, n)
                    np.testing.assert_array_equal(m[a:b], ds[a:b])
            np.testing.assert_array_equal(m[:], ds[:])


def test_not_read_directly_where_the_bytes_are_not_plain(tmp_path):
    path = tmp_path / "odd.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("gzip", data=np.arange(1000, dtype=np.float32), compression="gzip", chunks=(100,))
        f.create_dataset("big_endian", data=np.arange(1000, dtype=">f4"))
        f.create_dataset("two_d", data=np.zeros((10, 10), dtype=np.float32))
        f.create_dataset("empty", data=np.zeros(0, dtype=np.float32))
        f.create_dataset("ok", data=np.arange(1000, dtype=np.float32))
    with h5py.File(path, "r") as f:
        for name in ("gzip", "big_endian", "two_d", "empty"):
            assert direct_or_none(f[name]) is None, name
        assert direct_or_none(f["ok"]) is not None
    with h5py.File(path, "r+") as f:  # writable: HDF5 may hold data not yet in the file
        assert direct_or_none(f["ok"]) is None


def test_direct_reads_are_own_arrays_and_outlive_the_file(sim_path):
    before = _sha256(sim_path)
    with h5py.File(sim_path, "r") as f:
        m = direct_or_none(f["X/data"])
        expected = f["X/data"][100:200]
    part = m[100:200]
    assert part.flags.writeable and part.base is None  # the caller's own array
    part[:] = -1.0  # the file is not touched
    np.testing.assert_array_equal(m[100:200], expected)  # read again, after HDF5 closed the file
    assert _sha256(sim_path) == before


def test_a_file_cut_short_while_read_is_a_clear_error(sim_path, tmp_path):
    path = tmp_path / "cut.h5ad"
    path.write_bytes(sim_path.read_bytes())
    with h5py.File(path, "r") as f:
        m = direct_or_none(f["X/data"])
    last = int(np.argmax(m.offsets))  # the extent stored last in the file
    end = int(m.offsets[last]) + (int(m.starts[last + 1]) - int(m.starts[last])) * m.dtype.itemsize
    os.truncate(path, end - 8)
    np.testing.assert_array_equal(m[0:10], ad.read_h5ad(sim_path).X.data[:10])  # what is left still reads
    with pytest.raises(InvalidDataError, match="truncated or rewritten"):
        m[int(m.starts[last + 1]) - 5 : int(m.starts[last + 1])]


def test_blocks_cover_the_rows(sim_path):
    backed = ad.read_h5ad(sim_path, backed="r")
    dense = ad.read_h5ad(sim_path).X.toarray()
    reader = RowReader(backed.X)
    assert reader.direct
    rows = np.arange(300, 4700)
    blocks = reader.read_blocks(rows)
    np.testing.assert_array_equal(np.concatenate([r for r, _ in blocks]), rows)
    np.testing.assert_array_equal(sp.vstack([b for _, b in blocks]).toarray(), dense[rows])
    np.testing.assert_array_equal(reader.read(rows).toarray(), dense[rows])  # one block, for shuffling
    gaps = np.sort(np.random.default_rng(0).choice(5000, 900, replace=False))  # rows with gaps
    np.testing.assert_array_equal(sp.vstack([b for _, b in reader.read_blocks(gaps)]).toarray(), dense[gaps])
    ((positions, lazy),) = reader.lazy_blocks(gaps)  # read later, by the minibatches
    assert isinstance(lazy, FileRows) and lazy.shape == (900, dense.shape[1])
    np.testing.assert_array_equal(positions, gaps)
    np.testing.assert_array_equal(lazy[np.arange(900)].toarray(), dense[gaps])
    np.testing.assert_array_equal(lazy[np.arange(5, 700, 3)].toarray(), dense[gaps[5:700:3]])


def test_in_order_minibatches_read_only_their_own_entries(sim_path, monkeypatch):
    """In file order each minibatch reads the entries of its own rows (one read per run of nearby rows),
    into arrays of its own: a gap of more than 64 rows is not read, and no minibatch shares memory with
    another."""
    backed = ad.read_h5ad(sim_path, backed="r")
    memory = ad.read_h5ad(sim_path).X
    reads = []
    getitem = FileArray.__getitem__
    monkeypatch.setattr(
        FileArray, "__getitem__", lambda self, key: reads.append(key.stop - key.start) or getitem(self, key)
    )
    reader = RowReader(backed.X)
    rows = np.concatenate([np.arange(0, 2500), np.arange(2600, 5000, 2)])  # a gap of 100 rows, then every other row
    blocks = RowBlocks([b for _, b in reader.lazy_blocks(rows)])
    reads.clear()
    out = []
    for part in np.array_split(np.arange(len(rows)), 9):
        indptr, cols, values = gather_csr(blocks, part)
        expected = memory[rows[part]]
        np.testing.assert_array_equal(values, expected.data)
        np.testing.assert_array_equal(cols, expected.indices)
        np.testing.assert_array_equal(indptr, expected.indptr)
        assert cols.dtype == indptr.dtype == np.int32
        out.append((cols, values))
    wanted = memory[:2500].nnz + memory[2600:5000:2].nnz
    # data and indices: every wanted entry read once; in the second part the rows between wanted rows
    # are read through (gaps of one row); the gap of 100 rows is not read
    assert 2 * wanted < sum(reads) <= 2 * (memory[:2500].nnz + memory[2600:5000].nnz)
    assert not any(np.shares_memory(a, b) for i, x in enumerate(out) for y in out[i + 1 :] for a, b in zip(x, y))


def test_a_file_checked_at_setup_is_not_checked_again_until_it_changes(sim_path, tmp_path):
    path = tmp_path / "copy.h5ad"
    path.write_bytes(sim_path.read_bytes())
    backed = ad.read_h5ad(path, backed="r")
    assert not counts_checked(backed.X)
    cellvi.model.SCVI.setup_anndata(backed, batch_key="batch")
    assert counts_checked(backed.X)
    model = cellvi.model.SCVI(backed, n_hidden=16, n_latent=4)
    data = model._cell_data()
    assert not model._loader(data, None, 64, True, 0).reader.validate  # the loaders skip the check
    assert counts_checked(ad.read_h5ad(path, backed="r").X)  # the same unchanged file, opened again
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # the file changed since
    assert not counts_checked(backed.X)
    assert model._loader(data, None, 64, True, 0).reader.validate  # decided at each loader, not cached
    assert not counts_checked(ad.read_h5ad(path).X)  # in memory: checked by the registry, not here


def test_inference_on_an_unchecked_file_still_checks_every_read(sim_path, tmp_path):
    adata = ad.read_h5ad(sim_path)
    cellvi.model.SCVI.setup_anndata(adata, batch_key="batch")
    model = cellvi.model.SCVI(adata, n_hidden=16, n_latent=4)
    bad = adata.copy()
    bad.X = bad.X.astype(np.float32)
    bad.X.data[bad.X.indptr[4000]] = 2.5  # one non-integer count, in a cell far from the start
    bad.write_h5ad(tmp_path / "bad.h5ad")
    backed = ad.read_h5ad(tmp_path / "bad.h5ad", backed="r")
    with pytest.raises(InvalidDataError, match="non-integer"):
        model.get_latent_representation(backed)


@pytest.mark.parametrize("sparse_counts", [False, True])
def test_loader_in_order_gives_the_in_memory_minibatches(sim_path, sparse_counts):
    """Minibatches that span blocks (and reads) are stacked from their pieces: the same minibatches, cell
    for cell, as from the matrix in memory."""
    from cellvi.data import CellData, MinibatchLoader
    from cellvi.data.ondisk import OnDiskLoader

    backed = ad.read_h5ad(sim_path, backed="r")
    memory = ad.read_h5ad(sim_path).X
    n = backed.n_obs
    codes = np.arange(n, dtype=np.int32)
    idx = np.concatenate([np.arange(0, 2000), np.arange(2003, n, 2)])  # a gap, then every other cell
    kw = dict(batch_size=97, likelihood_terms=True, sparse_counts=sparse_counts)
    disk = list(OnDiskLoader(CellData(backed.X, codes, codes), idx, chunk_size=700, buffer_chunks=2, **kw))
    mem = list(MinibatchLoader(CellData(memory, codes, codes), idx, **kw))
    assert len(disk) == len(mem) > 10
    for a, b in zip(disk, mem):
        assert a.keys() == b.keys()
        for key in a:
            for x, y in zip(*((v if isinstance(v, tuple) else (v,)) for v in (a[key], b[key]))):
                np.testing.assert_array_equal(x.numpy(), y.numpy())


def test_shuffled_minibatches_gather_from_unstacked_blocks(sim_path):
    """Training buffers keep one block per chunk (never stacked) and gather each minibatch from them."""
    from cellvi.data import CellData
    from cellvi.data.ondisk import OnDiskLoader

    backed = ad.read_h5ad(sim_path, backed="r")
    dense = ad.read_h5ad(sim_path).X.toarray()
    codes = np.arange(backed.n_obs, dtype=np.int32)
    loader = OnDiskLoader(
        CellData(backed.X, codes, codes), batch_size=64, shuffle=True, chunk_size=600, buffer_chunks=3
    )
    seen = []
    for b in loader:
        ids = b["batch"].numpy()
        np.testing.assert_array_equal(b["X"].numpy(), dense[ids])
        rows, cols = (t.numpy() for t in b["nonzero"])
        np.testing.assert_array_equal(dense[ids][rows, cols] != 0, True)
        seen.append(ids)
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)), codes)


def test_extents_are_kept_while_the_file_is_unchanged(tmp_path, monkeypatch):
    from cellvi.data import direct

    calls = []
    find = direct._extents
    monkeypatch.setattr(direct, "_extents", lambda ds: calls.append(ds.name) or find(ds))
    path = tmp_path / "x.h5"

    def write(values, shift):
        with h5py.File(path, "w") as f:
            if shift:  # another dataset first: x's bytes move
                f.create_dataset("pad", data=np.ones(shift, dtype=np.float32))
            f.create_dataset("x", data=values, chunks=(500,))

    write(np.arange(5000, dtype=np.float32), 0)
    for _ in range(2):
        with h5py.File(path, "r") as f:
            np.testing.assert_array_equal(direct.direct_or_none(f["x"])[0:5000], np.arange(5000))
    assert calls == ["/x"]  # found once
    write(-np.arange(5000, dtype=np.float32), 3000)  # the file changes
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(direct.direct_or_none(f["x"])[0:5000], -np.arange(5000))
    assert calls == ["/x", "/x"]
