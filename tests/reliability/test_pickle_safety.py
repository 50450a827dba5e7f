"""Loading never unpickles arbitrary objects: a pickle payload planted in any file of a model folder, or
as a training checkpoint, is refused with a ModelFileError and never runs."""

from __future__ import annotations

import io
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cellvi.errors import ModelFileError
from cellvi.model import SCVI

from ._helpers import make_adata


class Payload:
    """Unpickling this object opens (creates) ``marker``: the stand-in for arbitrary code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def payloads(marker) -> dict[str, bytes]:
    """Ways to deliver the payload: a plain pickle, and torch.save's zip format (what scvi-tools uses)."""
    buf = io.BytesIO()
    torch.save({"model_state_dict": Payload(str(marker)), "attr_dict": {}}, buf)
    return {"pickle": pickle.dumps(Payload(str(marker))), "torch": buf.getvalue()}


def test_the_payload_is_live(tmp_path):
    """Control: the payloads do run when unpickled, so the tests below can fail."""
    marker = tmp_path / "ran"
    for kind, blob in payloads(marker).items():
        if kind == "pickle":
            pickle.loads(blob)
        else:
            torch.load(io.BytesIO(blob), weights_only=False)
        assert marker.exists()
        marker.unlink()


@pytest.fixture
def folder(tmp_path):
    a = make_adata()
    SCVI.setup_anndata(a)
    model = SCVI(a, n_hidden=8, n_latent=3)
    model.train(max_epochs=1, batch_size=32)
    path = tmp_path / "model"
    model.save(path, save_anndata=True)
    return path


@pytest.mark.parametrize("name", ["model.json", "model.safetensors", "adata.h5ad"])
@pytest.mark.parametrize("kind", ["pickle", "torch"])
def test_payload_in_model_folder_is_refused(folder, tmp_path, name, kind):
    marker = tmp_path / "ran"
    (folder / name).write_bytes(payloads(marker)[kind])
    with pytest.raises(ModelFileError):
        SCVI.load(folder)
    if name != "adata.h5ad":
        with pytest.raises(ModelFileError):
            SCVI.load(folder, adata=make_adata())
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["pickle", "torch"])
def test_planted_scvi_tools_model_pt_is_ignored(folder, tmp_path, kind):
    marker = tmp_path / "ran"
    (folder / "model.pt").write_bytes(payloads(marker)[kind])
    model = SCVI.load(folder)
    assert np.isfinite(model.get_latent_representation()).all()
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("kind", ["pickle", "torch"])
def test_payload_as_checkpoint_is_refused(tmp_path, kind):
    marker = tmp_path / "ran"
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "checkpoint.pt").write_bytes(payloads(marker)[kind])
    a = make_adata()
    SCVI.setup_anndata(a)
    model = SCVI(a, n_hidden=8, n_latent=3)
    with pytest.raises(ModelFileError, match="checkpoint") as info:
        model.train(max_epochs=2, checkpoint_dir=str(ckpt), checkpoint_every=1, resume=True)
    assert len(str(info.value)) < 400 and "Delete it" in str(info.value)
    assert not marker.exists()
    assert not model.is_trained


def test_checkpoint_from_another_model_is_refused(tmp_path):
    a = make_adata()
    SCVI.setup_anndata(a)
    SCVI(a, n_hidden=8, n_latent=3).train(max_epochs=1, checkpoint_dir=str(tmp_path), checkpoint_every=1)
    other = SCVI(a, n_hidden=8, n_latent=4)
    with pytest.raises(ModelFileError, match="does not fit"):
        other.train(max_epochs=2, checkpoint_dir=str(tmp_path), checkpoint_every=1, resume=True)
    shutil.copy(tmp_path / "checkpoint.pt", tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="Delete it"):
        SCVI(a, n_hidden=8, n_latent=3).train(max_epochs=2, checkpoint_dir=str(tmp_path), resume=True)


SCVI_TOOLS_FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "scvi_tools" / "scvi_zinb_gene"


def _scvi_tools_folder_with(tmp_path, where: str, marker) -> Path:
    """A copy of a real scvi-tools 1.4.2 folder whose model.pt carries the payload at ``where``."""
    folder = tmp_path / "scvi_tools_model"
    folder.mkdir()
    if where == "whole file":
        (folder / "model.pt").write_bytes(payloads(marker)["torch"])
        return folder
    saved = torch.load(SCVI_TOOLS_FIXTURE / "model.pt", weights_only=False)  # our own trusted fixture
    if where == "history":
        saved["attr_dict"]["history_"]["elbo_train"] = Payload(str(marker))
    elif where == "object array":
        saved["attr_dict"]["registry_"]["field_registries"]["batch"]["state_registry"]["categorical_mapping"] = (
            np.array(["b0", Payload(str(marker))], dtype=object)
        )
    else:
        saved["model_state_dict"]["px_r"] = Payload(str(marker))
    torch.save(saved, folder / "model.pt")
    return folder


@pytest.mark.parametrize("where", ["whole file", "history", "object array", "state dict"])
def test_payload_in_scvi_tools_model_pt_is_refused(tmp_path, where):
    """scvi-tools' model.pt is a pickle: a payload anywhere in it is refused by name and never runs."""
    marker = tmp_path / "ran"
    folder = _scvi_tools_folder_with(tmp_path, where, marker)
    a = make_adata(n_genes=30)
    for load in (
        lambda: SCVI.load(folder, adata=a),
        lambda: SCVI.load_query_data(a.copy(), folder),
        lambda: SCVI.prepare_query_anndata(a.copy(), folder),
    ):
        with pytest.raises(ModelFileError, match=r"open.*not load|not load.*open") as info:
            load()
        assert "io.open" in str(info.value) or "builtins.open" in str(info.value)
    assert not marker.exists()
    assert "_cellvi_registry" not in a.uns
