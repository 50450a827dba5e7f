"""Memory-mapped reads of h5ad arrays (cellvi.data.mapped) and the blocks the on-disk reader builds."""

from __future__ import annotations

import hashlib
import mmap
import os

import anndata as ad
import h5py
import numpy as np
import pytest
import scipy.sparse as sp

import cellvi
from cellvi.data.mapped import MappedArray, mapped_or_none
from cellvi.data.matrix import counts_checked
from cellvi.data.ondisk import RowReader
from cellvi.errors import InvalidDataError


@pytest.fixture(scope="module")
def sim_path(tmp_path_factory):
    """An h5ad whose X/data and X/indices were appended to in turns, in small chunks, so that each is
    stored in many separate runs of bytes in the file (as large files written in slabs are)."""
    path = tmp_path_factory.mktemp("mapped") / "sim.h5ad"
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


def _on_the_map(a: np.ndarray) -> bool:
    """Whether ``a``'s memory is a memory map (not a copy)."""
    while isinstance(a, np.ndarray) and a.base is not None:
        a = a.base
    return isinstance(a.obj if isinstance(a, memoryview) else a, mmap.mmap)


def _sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_mapped_slices_equal_h5py_reads(sim_path, tmp_path):
    plain = tmp_path / "plain.h5"  # contiguous (unchunked) storage too
    with h5py.File(plain, "w") as f:
        f.create_dataset("x", data=np.arange(10_000, dtype=np.int64) * 3)
    rng = np.random.default_rng(0)
    with h5py.File(sim_path, "r") as f, h5py.File(plain, "r") as g:
        datasets = [f["X/data"], f["X/indices"], f["X/indptr"], g["x"]]
        assert len(mapped_or_none(f["X/data"]).starts) > 3  # several extents: reads across them are tested
        for ds in datasets:
            m = mapped_or_none(ds)
            assert isinstance(m, MappedArray) and m.shape == ds.shape
            n = len(ds)
            cuts = [int(c) for c in m.starts] + [int(c) for c in rng.integers(0, n, 40)]
            for a in cuts:
                for b in (a, a + 1, a + 17, a + int(rng.integers(0, n)), n):
                    b = min(b, n)
                    np.testing.assert_array_equal(m[a:b], ds[a:b])
            np.testing.assert_array_equal(m[:], ds[:])


def test_not_mapped_where_the_bytes_are_not_plain(tmp_path):
    path = tmp_path / "odd.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("gzip", data=np.arange(1000, dtype=np.float32), compression="gzip", chunks=(100,))
        f.create_dataset("big_endian", data=np.arange(1000, dtype=">f4"))
        f.create_dataset("two_d", data=np.zeros((10, 10), dtype=np.float32))
        f.create_dataset("empty", data=np.zeros(0, dtype=np.float32))
        f.create_dataset("ok", data=np.arange(1000, dtype=np.float32))
    with h5py.File(path, "r") as f:
        for name in ("gzip", "big_endian", "two_d", "empty"):
            assert mapped_or_none(f[name]) is None, name
        assert mapped_or_none(f["ok"]) is not None
    with h5py.File(path, "r+") as f:  # writable: HDF5 may hold data not yet in the file
        assert mapped_or_none(f["ok"]) is None


def test_mapped_arrays_are_private_and_outlive_the_file(sim_path):
    before = _sha256(sim_path)
    with h5py.File(sim_path, "r") as f:
        m = mapped_or_none(f["X/data"])
        expected = f["X/data"][100:200]
    part = m[100:200]
    assert part.flags.writeable
    part[:] = -1.0  # copy-on-write: the file is not touched
    np.testing.assert_array_equal(m[100:200], expected)  # a new map reads the file again, after it was closed
    assert _sha256(sim_path) == before


def test_blocks_are_views_that_cover_the_rows(sim_path):
    backed = ad.read_h5ad(sim_path, backed="r")
    dense = ad.read_h5ad(sim_path).X.toarray()
    reader = RowReader(backed.X)
    rows = np.arange(300, 4700)
    blocks = reader.read_blocks(rows)
    assert len(blocks) > 2
    np.testing.assert_array_equal(np.concatenate([r for r, _ in blocks]), rows)
    np.testing.assert_array_equal(sp.vstack([b for _, b in blocks]).toarray(), dense[rows])
    # every block of more than one row reads the file's map itself (a row split by a run's end is alone)
    assert all(_on_the_map(b.data) and _on_the_map(b.indices) for r, b in blocks if len(r) > 1)
    np.testing.assert_array_equal(reader.read(rows).toarray(), dense[rows])  # one block, for shuffling
    gaps = np.sort(np.random.default_rng(0).choice(5000, 900, replace=False))  # rows with gaps
    np.testing.assert_array_equal(sp.vstack([b for _, b in reader.read_blocks(gaps)]).toarray(), dense[gaps])


def test_sparse_minibatches_copy_the_values_off_the_map(sim_path):
    """Inference reads the blocks in file order (views of the map), but the values it hands the model
    are a copy: the model reads them several times, faster from a fresh copy than from the map."""
    from cellvi.data.matrix import RowBlocks, gather_csr

    backed = ad.read_h5ad(sim_path, backed="r")
    memory = ad.read_h5ad(sim_path).X
    blocks = RowBlocks([b for _, b in RowReader(backed.X).read_blocks(np.arange(0, 3000))])
    assert all(_on_the_map(b.data) for b in blocks.blocks if b.shape[0] > 1)
    for rows in (np.arange(5, 60), np.arange(0, 3000)):  # within one block, and across blocks
        indptr, cols, values = gather_csr(blocks, rows)
        assert not _on_the_map(values)
        expected = memory[rows]
        np.testing.assert_array_equal(values, expected.data)
        np.testing.assert_array_equal(cols, expected.indices)
        np.testing.assert_array_equal(indptr, expected.indptr)


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
    loader = OnDiskLoader(CellData(backed.X, codes, codes), batch_size=64, shuffle=True, chunk_size=600,
                          buffer_chunks=3)
    seen = []
    for b in loader:
        ids = b["batch"].numpy()
        np.testing.assert_array_equal(b["X"].numpy(), dense[ids])
        rows, cols = (t.numpy() for t in b["nonzero"])
        np.testing.assert_array_equal(dense[ids][rows, cols] != 0, True)
        seen.append(ids)
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)), codes)


def test_extents_are_kept_while_the_file_is_unchanged(tmp_path, monkeypatch):
    from cellvi.data import mapped

    calls = []
    find = mapped._extents
    monkeypatch.setattr(mapped, "_extents", lambda ds: calls.append(ds.name) or find(ds))
    path = tmp_path / "x.h5"

    def write(values, shift):
        with h5py.File(path, "w") as f:
            if shift:  # another dataset first: x's bytes move
                f.create_dataset("pad", data=np.ones(shift, dtype=np.float32))
            f.create_dataset("x", data=values, chunks=(500,))

    write(np.arange(5000, dtype=np.float32), 0)
    for _ in range(2):
        with h5py.File(path, "r") as f:
            np.testing.assert_array_equal(mapped.mapped_or_none(f["x"])[0:5000], np.arange(5000))
    assert calls == ["/x"]  # found once
    write(-np.arange(5000, dtype=np.float32), 3000)  # the file changes
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(mapped.mapped_or_none(f["x"])[0:5000], -np.arange(5000))
    assert calls == ["/x", "/x"]
