"""Out-of-core data: chunked loader, shards, backed / zarr training and streamed outputs."""

from __future__ import annotations

import hashlib

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import cellvi
from cellvi.data import CellData
from cellvi.data.ondisk import OnDiskLoader, chunk_split, is_on_disk, open_zarr, plan_chunks
from cellvi.errors import InvalidDataError, InvalidParameterError, ModelFileError


def _sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def h5ad_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("ondisk") / "sim.h5ad"
    cellvi.data.simulate(n_cells=6000, n_genes=150, n_batches=2, n_cell_types=4, seed=3, path=path, chunk_size=2500)
    return path


def _ids(loader) -> np.ndarray:
    """Cell positions visited, in order (each cell's 'batch' code is set to its position)."""
    return np.concatenate([b["batch"].numpy() for b in loader])


def _positional(X) -> CellData:
    n = X.shape[0]
    return CellData(X, np.arange(n, dtype=np.int64), np.zeros(n, dtype=np.int64))


def test_loader_reads_the_right_rows_in_order_and_shuffled(h5ad_path):
    backed = ad.read_h5ad(h5ad_path, backed="r")
    dense = ad.read_h5ad(h5ad_path).X
    idx = np.sort(np.random.default_rng(0).choice(backed.n_obs, 2500, replace=False))
    for shuffle in (False, True):
        loader = OnDiskLoader(
            _positional(backed.X), idx, batch_size=97, shuffle=shuffle, chunk_size=500, buffer_chunks=2
        )
        batches = list(loader)
        assert len(batches) == len(loader)
        for b in batches:  # every row is the file's row of that cell
            np.testing.assert_array_equal(b["X"].numpy(), dense[b["batch"].numpy()].toarray())
        seen = _ids(batches)
        np.testing.assert_array_equal(np.sort(seen), idx)
        assert np.array_equal(seen, idx) != shuffle
    loader.set_epoch(1)
    assert not np.array_equal(_ids(loader), seen)  # a new order each epoch, reproducible per epoch
    np.testing.assert_array_equal(_ids(loader), _ids(loader))


def test_reading_ahead_or_not_gives_the_same_minibatches(h5ad_path):
    backed = ad.read_h5ad(h5ad_path, backed="r")
    runs = []
    for read_ahead in (False, True):
        loader = OnDiskLoader(
            _positional(backed.X), batch_size=97, shuffle=True, chunk_size=300, buffer_chunks=2, read_ahead=read_ahead
        )
        runs.append([(b["batch"].numpy(), b["X"].numpy()) for b in loader])
    assert len(runs[0]) == len(runs[1])
    for (ids_a, x_a), (ids_b, x_b) in zip(*runs):
        np.testing.assert_array_equal(ids_a, ids_b)
        np.testing.assert_array_equal(x_a, x_b)


def test_no_minibatch_of_one_cell():
    data = _positional(sp.random(1025, 5, density=0.5, format="csr", random_state=0).ceil())
    sizes = [len(b["X"]) for b in OnDiskLoader(data, batch_size=128, shuffle=True, chunk_size=300)]
    assert sum(sizes) == 1025 and min(sizes) > 1


def test_shards_are_disjoint_and_cover_all_cells(h5ad_path):
    backed = ad.read_h5ad(h5ad_path, backed="r")
    idx = np.arange(0, backed.n_obs, 3)
    for epoch in (0, 1):
        parts = []
        for k in range(3):
            loader = OnDiskLoader(_positional(backed.X), idx, 64, True, 5, chunk_size=256, shard_index=k, n_shards=3)
            loader.set_epoch(epoch)
            parts.append(_ids(loader))
        allc = np.concatenate(parts)
        assert len(allc) == len(idx)
        np.testing.assert_array_equal(np.sort(allc), idx)
        assert max(map(len, parts)) - min(map(len, parts)) <= 256
    with pytest.raises(InvalidParameterError):
        OnDiskLoader(_positional(backed.X), shard_index=3, n_shards=3)


def test_chunks_and_split():
    idx = np.array([0, 1, 5, 9, 10, 30, 31])
    chunks = plan_chunks(idx, 10)
    np.testing.assert_array_equal(np.concatenate(chunks), idx)
    assert all(c[-1] - c[0] < 10 for c in chunks)
    train, val = chunk_split(1000, 850, 150, seed=0, n_blocks=10)
    assert len(train) == 850 and len(val) == 150 and not set(train) & set(val)
    assert 1 + (np.diff(val) > 1).sum() <= 2  # runs of whole 100-row blocks (at most 2 of them)


def test_backed_matrix_stays_on_disk_and_bad_counts_are_caught(tmp_path):
    adata = cellvi.data.simulate(n_cells=300, n_genes=40, seed=0)
    adata.X = adata.X.astype(np.float32)
    adata.X.data[adata.X.indptr[250]] = 0.5  # one non-integer count in cell 250
    adata.write_h5ad(tmp_path / "bad.h5ad")
    backed = ad.read_h5ad(tmp_path / "bad.h5ad", backed="r")
    registry = cellvi.data.Registry.from_anndata(ad.read_h5ad(tmp_path / "bad.h5ad")[:200].copy())
    data = registry.cell_data(backed)
    assert is_on_disk(data.X)
    with pytest.raises(InvalidDataError, match="non-integer"):
        list(OnDiskLoader(data, batch_size=64))
    with pytest.raises(InvalidDataError, match="non-integer"):
        cellvi.model.SCVI.setup_anndata(backed)


def test_csc_on_disk_is_refused(tmp_path):
    adata = cellvi.data.simulate(n_cells=100, n_genes=30, seed=0)
    adata.X = adata.X.tocsc()
    adata.write_h5ad(tmp_path / "csc.h5ad")
    backed = ad.read_h5ad(tmp_path / "csc.h5ad", backed="r")
    with pytest.raises(InvalidDataError, match="CSR"):
        OnDiskLoader(_positional(backed.X))


def _train(adata, seed):
    cellvi.settings.seed = seed
    cellvi.model.SCVI.setup_anndata(adata, batch_key="batch")
    model = cellvi.model.SCVI(adata, n_latent=8, n_hidden=64)
    model.train(max_epochs=6, batch_size=128, train_size=0.85, plan_kwargs={"n_epochs_kl_warmup": 3})
    return model


def test_out_of_core_training_matches_in_memory(h5ad_path, tmp_path):
    """Trained from the backed file, the held-out ELBO equals in-memory training's within run-to-run
    noise. Noise: the larger spread over two seeds of either way of training, plus 0.5% of |ELBO|
    (two seeds can by chance land close together). Same file, same held-out cells for both."""
    full = ad.read_h5ad(h5ad_path)
    full[:5000].write_h5ad(tmp_path / "train.h5ad")
    test = full[5000:].copy()
    before = _sha256(tmp_path / "train.h5ad")
    mem = [_train(ad.read_h5ad(tmp_path / "train.h5ad"), s).get_elbo(test) for s in (0, 1)]
    disk = []
    for s in (0, 1):
        backed = ad.read_h5ad(tmp_path / "train.h5ad", backed="r")
        model = _train(backed, s)
        assert is_on_disk(model._cell_data().X)  # trained out of core
        disk.append(model.get_elbo(test))
        backed.file.close()
    noise = max(abs(mem[0] - mem[1]), abs(disk[0] - disk[1])) + 0.005 * abs(np.mean(mem))
    assert abs(np.mean(disk) - np.mean(mem)) <= noise, (disk, mem)
    assert _sha256(tmp_path / "train.h5ad") == before  # the input file is never modified


def test_zarr_training_and_streamed_outputs(h5ad_path, tmp_path):
    full = ad.read_h5ad(h5ad_path)[:1500].copy()
    full.write_zarr(tmp_path / "d.zarr")
    lazy = open_zarr(tmp_path / "d.zarr")
    assert is_on_disk(lazy.X)
    cellvi.model.SCVI.setup_anndata(lazy, batch_key="batch")
    model = cellvi.model.SCVI(lazy, n_latent=5, n_hidden=32)
    model.train(max_epochs=2, batch_size=128, check_val_every_n_epoch=1)
    assert np.isfinite(model.history["elbo_validation"]).all()

    latent = model.get_latent_representation(full, obsm_key=None)  # the same cells in memory
    np.testing.assert_allclose(model.get_latent_representation(lazy), latent, rtol=1e-5, atol=1e-5)
    out = tmp_path / "out.h5ad"
    model.write_latent(out, batch_size=100)
    model.write_normalized_expression(out, layer="norm", library_size=1e4, batch_size=300)
    res = ad.read_h5ad(out, backed="r")
    assert list(res.obs_names) == list(full.obs_names) and list(res.var_names) == list(full.var_names)
    np.testing.assert_allclose(res.obsm["X_scvi"], latent, rtol=1e-5, atol=1e-5)
    norm = model.get_normalized_expression(full, library_size=1e4, return_numpy=True)
    np.testing.assert_allclose(res.file["layers/norm"][:], norm, rtol=1e-4, atol=1e-4)
    res.file.close()
    with pytest.raises(ModelFileError, match="overwrite"):
        model.write_latent(out)
    with pytest.raises(ModelFileError, match="other cells"):
        model.write_latent(out, indices=np.arange(10), obsm_key="sub")


def test_writers_never_touch_the_input(h5ad_path, tmp_path):
    full = ad.read_h5ad(h5ad_path)[:800].copy()
    full.write_h5ad(tmp_path / "in.h5ad")
    before = _sha256(tmp_path / "in.h5ad")
    backed = ad.read_h5ad(tmp_path / "in.h5ad", backed="r")
    cellvi.model.SCVI.setup_anndata(backed)
    model = cellvi.model.SCVI(backed, n_latent=4, n_hidden=16)
    with pytest.raises(InvalidParameterError, match="input file"):
        model.write_latent(tmp_path / "in.h5ad")
    path = model.write_latent(tmp_path / "z.h5ad", indices=np.arange(100, 400))
    with h5py.File(path) as f:
        assert f["obsm/X_scvi"].shape == (300, 4)
    backed.file.close()
    assert _sha256(tmp_path / "in.h5ad") == before


def test_an_existing_output_must_hold_the_same_cells_in_order(tmp_path):
    from cellvi.data.writers import write_rows

    obs = pd.DataFrame(index=pd.Index([f"c{i}" for i in range(50)], dtype=str))
    path = write_rows(tmp_path / "o.h5ad", "obsm", "z", [np.zeros((50, 2), np.float32)], 2, obs, ["g"])
    write_rows(path, "obsm", "w", [np.ones((50, 3), np.float32)], 3, obs, ["g"])  # the same cells: fine
    swapped = obs.index.to_list()
    swapped[43], swapped[44] = swapped[44], swapped[43]  # the same names, two in another order
    with pytest.raises(ModelFileError, match="other cells"):
        write_rows(path, "obsm", "v", [np.ones((50, 1), np.float32)], 1, pd.DataFrame(index=swapped), ["g"])
    with h5py.File(path) as f:
        assert set(f["obsm"]) == {"z", "w"}
