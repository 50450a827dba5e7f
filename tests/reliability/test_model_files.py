"""Saved model folders: every missing, truncated, corrupted or foreign file gives a ModelFileError and
changes nothing; an interrupted save never leaves a half-written model."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

import cellvi
from cellvi.errors import CellviError, ModelFileError, RegistryMismatchError
from cellvi.model import SCVI, _files

from ._helpers import assert_adata_unchanged, folder_digest, make_adata, snapshot

FILES = ["model.json", "model.safetensors", "adata.h5ad"]


@pytest.fixture
def saved(tmp_path):
    """A trained model saved with its AnnData; returns (folder, latent of the saved model)."""
    a = make_adata()
    SCVI.setup_anndata(a, batch_key="batch")
    model = SCVI(a, n_hidden=8, n_latent=3)
    model.train(max_epochs=2, batch_size=32)
    folder = tmp_path / "model"
    model.save(folder, save_anndata=True)
    return folder, model.get_latent_representation()


def _corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "missing":
        path.unlink()
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":  # 64 bytes in the middle overwritten (0xff is never valid UTF-8)
        mid = len(data) // 2
        noise = b"\xff" + bytes(np.random.default_rng(0).integers(0, 256, 63, dtype=np.uint8))
        path.write_bytes(data[:mid] + noise + data[mid + 64 :])
    elif how == "bitflip":  # one bit of the last byte, in the tensor data or the HDF5 payload
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 0x01]))


def _load_fails(folder: Path, adata=None, words=()):
    before = folder_digest(folder)
    snap = snapshot(adata) if adata is not None else None
    with pytest.raises(ModelFileError) as info:
        SCVI.load(folder, adata=adata)
    assert isinstance(info.value, OSError) and isinstance(info.value, CellviError)
    for word in words:
        assert word.lower() in str(info.value).lower(), (word, str(info.value))
    assert folder_digest(folder) == before  # loading only reads
    if adata is not None:
        assert_adata_unchanged(snap, adata)
    return str(info.value)


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("how", ["missing", "empty", "truncated", "garbage", "bitflip"])
def test_damaged_file_is_refused(saved, name, how):
    folder, _ = saved
    if name == "model.json" and how == "bitflip":
        pytest.skip("a flipped bit in the JSON text may change a value without breaking the file")
    _corrupt(folder / name, how)
    msg = _load_fails(folder)
    assert str(folder) in msg  # names the place
    if name != "adata.h5ad":  # with the data given, the damaged h5ad is not needed
        _load_fails(folder, adata=make_adata())


def test_missing_folder(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        SCVI.load(tmp_path / "nowhere")
    assert list(tmp_path.iterdir()) == []


def test_missing_adata_file_is_fine_when_data_is_given(saved):
    folder, latent = saved
    (folder / "adata.h5ad").unlink()
    _load_fails(folder, words=["save_anndata", "adata="])
    model = SCVI.load(folder, adata=make_adata())
    np.testing.assert_array_equal(model.get_latent_representation(), latent)


def _edit_meta(folder: Path, edit) -> None:
    path = folder / "model.json"
    meta = json.loads(path.read_text())
    meta = edit(meta)
    path.write_text(json.dumps(meta))


def test_other_cellvi_version_same_format_loads_with_a_warning(saved):
    folder, latent = saved
    _edit_meta(folder, lambda m: {**m, "cellvi_version": "0.0.1"})
    with pytest.warns(UserWarning, match="0.0.1"):
        model = SCVI.load(folder)
    np.testing.assert_array_equal(model.get_latent_representation(), latent)


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda m: {**m, "format": "cellvi-model/99", "cellvi_version": "9.0"}, ["cellvi-model/99", "9.0", "retrain"]),
        (lambda m: {**m, "model_class": "SCANVI"}, ["SCANVI", "cellvi.model.SCANVI"]),
        (lambda m: {k: v for k, v in m.items() if k != "registry"}, ["missing fields"]),
        (lambda m: [m], ["missing fields"]),
        (lambda m: {**m, "registry": {**m["registry"], "new_field": 1}}, ["registry"]),
        (lambda m: {**m, "init_params": {**m["init_params"], "n_latent": 4}}, ["does not fit", "wrong shapes"]),
        (lambda m: {**m, "init_params": {**m["init_params"], "n_latent": 0}}, ["init_params", "n_latent"]),
        (lambda m: {**m, "init_params": {**m["init_params"], "colour": "red"}}, ["init_params", "colour"]),
        (lambda m: {**m, "init_params": {"n_latent": 3}}, ["init_params", "dispersion"]),
        (lambda m: {**m, "sha256": {"model.safetensors": "0" * 64}}, ["SHA-256", "corrupted"]),
    ],
)
def test_edited_model_description(saved, edit, words):
    folder, _ = saved
    _edit_meta(folder, edit)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _load_fails(folder, words=words)
        _load_fails(folder, adata=make_adata(), words=words)


def test_load_with_unknown_categories_leaves_data_unchanged(saved):
    folder, _ = saved
    a = make_adata()
    a.obs.loc[a.obs_names[0], "batch"] = "b7"
    before = snapshot(a)
    with pytest.raises(RegistryMismatchError, match="b7"):
        SCVI.load(folder, adata=a)
    assert_adata_unchanged(before, a)


# ---------------------------------------------------------------------------------------------- atomic save
def _boom(*args, **kwargs):
    raise RuntimeError("disk full (simulated)")


@pytest.mark.parametrize("target", ["weights", "adata", "digest"])
def test_failed_save_keeps_the_old_model(saved, monkeypatch, target):
    folder, latent = saved
    before = folder_digest(folder)
    model = SCVI.load(folder)
    model.train(max_epochs=1, batch_size=32)  # different weights, so a partial overwrite would show
    patch = {"weights": (_files, "write_weights"), "adata": (ad.AnnData, "write_h5ad"), "digest": (_files, "sha256")}
    monkeypatch.setattr(*patch[target], _boom)
    with pytest.raises(RuntimeError, match="simulated"):
        model.save(folder, overwrite=True, save_anndata=True)
    monkeypatch.undo()
    assert folder_digest(folder) == before
    assert sorted(p.name for p in folder.parent.iterdir()) == ["model"]  # no temporary folder left
    np.testing.assert_array_equal(SCVI.load(folder).get_latent_representation(), latent)


def test_failed_first_save_leaves_nothing(tmp_path, monkeypatch):
    a = make_adata()
    SCVI.setup_anndata(a)
    model = SCVI(a, n_hidden=8, n_latent=3)
    monkeypatch.setattr(_files, "write_weights", _boom)
    with pytest.raises(RuntimeError, match="simulated"):
        model.save(tmp_path / "fresh")
    assert list(tmp_path.iterdir()) == []


def test_save_records_digests_of_the_files_it_wrote(saved):
    folder, _ = saved
    meta = json.loads((folder / "model.json").read_text())
    assert set(meta["sha256"]) == {"model.safetensors", "adata.h5ad"}
    for name, digest in meta["sha256"].items():
        assert _files.sha256(folder / name) == digest
    assert cellvi.__version__ == meta["cellvi_version"]
