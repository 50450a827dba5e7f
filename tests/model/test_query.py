"""Query mapping (scArches): gene preparation, architecture surgery, freezing, and label transfer."""

import warnings

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
import scipy.sparse as sp
import torch
from tests.conftest import real_data_path

import cellvi
from cellvi.errors import InvalidDataError, RegistryMismatchError
from cellvi.model import SCANVI, SCVI


@pytest.fixture
def split():
    """A reference (batches 0 and 1) and a query (batch 2) of one simulation, with an extra covariate."""
    adata = cellvi.data.simulate(n_cells=450, n_genes=60, n_batches=3, n_cell_types=3, seed=2)
    adata.obs["donor"] = np.where(np.arange(adata.n_obs) % 2, "d1", "d2")
    is_q = (adata.obs["batch"] == "batch2").to_numpy()
    query = adata[is_q].copy()
    query.obs["donor"] = np.where(np.arange(query.n_obs) % 2, "d1", "d3")  # d3 is new
    return adata[~is_q].copy(), query


def _reference(ref, **kwargs):
    SCVI.setup_anndata(ref, batch_key="batch", categorical_covariate_keys=["donor"])
    model = SCVI(ref, n_hidden=32, n_latent=4, encode_covariates=True, **kwargs)
    model.train(max_epochs=5)
    return model


def test_prepare_query_anndata_reorders_and_pads(split):
    ref, query = split
    model = _reference(ref)
    genes = list(ref.var_names)
    query.layers["counts"] = query.X.copy()
    # the query lacks 5 genes, has its genes shuffled and one gene the reference does not know
    sub = query[:, genes[5:][::-1]].copy()
    ones = sp.csr_matrix(np.ones((sub.n_obs, 1), dtype=np.float32))
    extra = ad.AnnData(ones, obs=sub.obs[[]], layers={"counts": ones.copy()})
    extra.var_names = ["not_in_reference"]
    sub = ad.concat([sub, extra], axis=1, merge="first")
    sub.obs = query.obs.copy()
    with pytest.warns(UserWarning, match="5 of the reference's 60 genes"):
        out = SCVI.prepare_query_anndata(sub, model, inplace=False)
    assert list(out.var_names) == genes
    dense, orig = out.X.toarray(), query.X.toarray()
    np.testing.assert_array_equal(dense[:, :5], 0)
    np.testing.assert_array_equal(dense[:, 5:], orig[:, 5:])
    np.testing.assert_array_equal(out.layers["counts"].toarray(), dense)
    assert sub.n_vars == 56  # the input is untouched
    # scvi-tools' default: in place, returning None; the user's uns is kept
    sub.uns["note"] = "kept"
    with pytest.warns(UserWarning):
        assert SCVI.prepare_query_anndata(sub, model) is None
    assert list(sub.var_names) == genes and sub.uns["note"] == "kept"
    np.testing.assert_array_equal(sub.X.toarray(), dense)
    assert list(SCVI.prepare_query_anndata(sub, model, return_reference_var_names=True)) == genes


def test_query_extends_categories_and_keeps_reference_latent(split):
    ref, query = split
    model = _reference(ref, dispersion="gene-batch", use_observed_lib_size=False)
    z_ref = model.get_latent_representation(ref, obsm_key=None)
    old = {k: v.clone() for k, v in model.module.state_dict().items()}

    qm = SCVI.load_query_data(query, model)
    assert qm.registry.categories["batch"] == ["batch0", "batch1", "batch2"]
    assert qm.registry.categories["donor"] == ["d1", "d2", "d3"]
    assert qm.module.px_r.shape[0] == 3 and qm.module.library_log_means.shape == (3,)
    trainable = {n for n, p in qm.module.named_parameters() if p.requires_grad}
    assert "decoder.decoder.linears.0.weight" not in trainable and "px_r" in trainable
    assert "z_encoder.encoder.injections.0.tables.0" in trainable  # batch table (new row)
    qm.train(max_epochs=5, plan_kwargs={"lr": 1e-2})
    new = qm.module.state_dict()
    # every reference weight of the encoder is where it was; new rows moved
    for key, value in old.items():
        if key.startswith("z_encoder") and "num_batches" not in key:
            torch.testing.assert_close(new[key][: len(value)], value, rtol=0, atol=0)
    torch.testing.assert_close(new["decoder.decoder.linears.0.weight"], old["decoder.decoder.linears.0.weight"])
    torch.testing.assert_close(new["px_r"][:2], old["px_r"], rtol=0, atol=0)
    assert not torch.equal(new["px_r"][2], old["px_r"].mean(0))
    table = new["z_encoder.encoder.injections.0.tables.0"]
    assert table[2].abs().sum() > 0  # the query batch's row has learned
    np.testing.assert_array_equal(qm.get_latent_representation(ref, obsm_key=None), z_ref)
    assert qm.get_latent_representation(query).shape == (query.n_obs, 4)


def test_query_from_folder_and_roundtrip(split, tmp_path):
    ref, query = split
    model = _reference(ref)
    model.save(tmp_path / "ref")
    qm = SCVI.load_query_data(query, str(tmp_path / "ref"))
    qm.train(max_epochs=2)
    qm.save(tmp_path / "query")
    back = SCVI.load(tmp_path / "query", adata=query)
    np.testing.assert_allclose(
        back.get_latent_representation(obsm_key=None), qm.get_latent_representation(obsm_key=None), atol=1e-6
    )


def test_query_errors(split):
    ref, query = split
    model = _reference(ref)
    bad = query.copy()
    bad.obs["batch"] = bad.obs["batch"].astype(object)
    bad.obs.iloc[:3, bad.obs.columns.get_loc("batch")] = np.nan
    with pytest.raises(InvalidDataError, match="batch.*3 missing"):
        SCVI.load_query_data(bad, model)
    with pytest.raises(RegistryMismatchError, match="prepare_query_anndata"):
        SCVI.load_query_data(query[:, ::-1].copy(), model)
    with pytest.raises(cellvi.errors.ModelFileError, match="SCVI"):
        SCANVI.load_query_data(query, model)


def test_scanvi_query_labels(split):
    ref, query = split
    ref.obs["labels"] = ref.obs["cell_type"].astype(str)
    SCANVI.setup_anndata(ref, labels_key="labels", unlabeled_category="Unknown", batch_key="batch")
    model = SCANVI(ref, n_hidden=32, n_latent=4)
    model.train(max_epochs=3)
    pred_ref = model.predict(ref, soft=True, keep_observed=False)
    novel = query.copy()
    novel.obs["labels"] = "a new type"
    with pytest.raises(RegistryMismatchError, match="Unknown"):
        SCANVI.load_query_data(novel, model)
    qm = SCANVI.load_query_data(query, model)  # no labels column: an unannotated query
    assert (query.obs["labels"] == "Unknown").all()
    assert not any(p.requires_grad for p in qm.module.classifier.parameters())
    qm.train(max_epochs=3)
    after = qm.predict(ref, soft=True, keep_observed=False)
    np.testing.assert_allclose(after.to_numpy(), pred_ref.to_numpy(), atol=1e-6)


def test_pbmc_label_transfer_to_a_held_out_chemistry():
    """Reference: 3' v1 and v2 PBMCs with their cell types; query: the 5' cells, unlabelled."""
    adata = sc.read_h5ad(real_data_path("pbmc_3chemistries.h5ad"))
    is_q = (adata.obs["batch"] == "5p").to_numpy()
    ref, query = adata[~is_q].copy(), adata[is_q].copy()
    ref.obs["labels"] = ref.obs["cell_type"].astype(str)
    SCANVI.setup_anndata(ref, labels_key="labels", unlabeled_category="Unknown", batch_key="batch")
    model = SCANVI(ref, encode_covariates=True)
    model.train(max_epochs=60)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same genes: nothing to pad
        query = SCANVI.prepare_query_anndata(query, model, inplace=False)
    qm = SCANVI.load_query_data(query, model)
    qm.train(max_epochs=40)
    truth = adata.obs["cell_type"].astype(str).to_numpy()[is_q]
    accuracy = float(np.mean(qm.predict() == truth))
    print(f"label transfer accuracy on 5' cells: {accuracy:.3f}")
    assert accuracy >= 0.85
