"""Models saved by scvi-tools 1.4.2 (tests/fixtures/scvi_tools, made by bench/make_scvi_fixtures.py) load
into cellvi and give scvi-tools' own numbers; what cellvi cannot represent is refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest
import torch

from cellvi.errors import ModelFileError, RegistryMismatchError
from cellvi.model import SCANVI, SCVI

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "scvi_tools"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())["fixtures"]


def data() -> anndata.AnnData:
    return anndata.read_h5ad(FIXTURES / "data.h5ad")


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_same_latent_and_expression_as_scvi_tools(name):
    cls = SCANVI if MANIFEST[name]["model"] == "SCANVI" else SCVI
    adata = data()
    model = cls.load(FIXTURES / name, adata)
    expected = np.load(FIXTURES / f"{name}.npz")
    np.testing.assert_allclose(model.get_latent_representation(adata), expected["latent"], rtol=1e-5, atol=1e-6)
    scale = model.get_normalized_expression(adata, return_numpy=True)
    np.testing.assert_allclose(scale, expected["scale"], rtol=1e-5, atol=1e-7)
    assert model.is_trained
    assert list(model.registry.var_names) == list(adata.var_names)
    if cls is SCANVI:
        assert model.classes_ == MANIFEST[name]["classes"]  # scvi-tools' order of the classes
        proba = model.predict(adata, soft=True, keep_observed=False)
        np.testing.assert_allclose(proba.to_numpy(), expected["proba"], rtol=1e-5, atol=1e-6)
        assert "train_classification_loss" in model.history.columns


def test_loads_the_saved_anndata_and_history():
    model = SCVI.load(FIXTURES / "scvi_zinb_gene")  # saved with save_anndata=True
    assert model.adata.n_obs == 60 and "_cellvi_registry" in model.adata.uns
    assert len(model.history) == 3 and (model.history["elbo_train"] > 0).all()  # scvi-tools' negative ELBO


def test_query_mapping_keeps_the_reference_latent():
    adata = data()
    query = adata[:20].copy()
    query.obs["batch"] = pd.Categorical(["new"] * 20)
    name = "scvi_zinb_genelabel_covs_encode"  # covariates in the encoder: the hardest case to keep still
    model = SCVI.load_query_data(query, FIXTURES / name)
    model.train(max_epochs=5, batch_size=16)
    ref = np.load(FIXTURES / f"{name}.npz")["latent"]
    np.testing.assert_allclose(model.get_latent_representation(adata), ref, rtol=1e-5, atol=1e-6)
    assert model.registry.categories["batch"] == ["b0", "b1", "new"]


def test_unknown_category_is_a_clear_error():
    adata = data()
    adata.obs["batch"] = pd.Categorical(["zzz"] * adata.n_obs)
    with pytest.raises(RegistryMismatchError, match="zzz"):
        SCVI.load(FIXTURES / "scvi_zinb_gene", adata)
    assert "_cellvi_registry" not in adata.uns


def _edited(tmp_path, edit) -> Path:
    saved = torch.load(FIXTURES / "scvi_zinb_gene" / "model.pt", weights_only=False)  # our trusted fixture
    edit(saved["attr_dict"])
    folder = tmp_path / "edited"
    folder.mkdir()
    torch.save(saved, folder / "model.pt")
    return folder


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda a: a["init_params_"]["kwargs"]["kwargs"].update(batch_representation="embedding"),
            "batch_representation='embedding'",
        ),
        (lambda a: a["init_params_"]["kwargs"]["kwargs"].update(log_variational=False), "log_variational=False"),
        (lambda a: a["init_params_"]["kwargs"]["kwargs"].update(new_option=1), "new_option"),
        (lambda a: a["registry_"].update(model_name="TOTALVI"), "TOTALVI"),
        (lambda a: a["registry_"]["setup_args"].update(size_factor_key="sf"), "size_factor_key"),
        (lambda a: a["init_params_"]["non_kwargs"].update(gene_likelihood="normal"), "gene_likelihood"),
    ],
)
def test_unsupported_architecture_is_refused_by_name(tmp_path, edit, message):
    folder = _edited(tmp_path, edit)
    adata = data()
    with pytest.raises(ModelFileError, match=message):
        SCVI.load(folder, adata)
    assert "_cellvi_registry" not in adata.uns


def test_wrong_class_says_which(tmp_path):
    with pytest.raises(ModelFileError, match="SCANVI"):
        SCVI.load(FIXTURES / "scanvi_labels_unknown", data())
