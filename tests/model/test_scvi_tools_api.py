"""scvi-tools call patterns that run unchanged with ``import cellvi as scvi`` (issue #20, section 2)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import cellvi
from cellvi.errors import InvalidParameterError
from cellvi.model import SCANVI, SCVI


@pytest.fixture
def adata():
    a = cellvi.data.simulate(n_cells=120, n_genes=30, n_batches=2, n_cell_types=3, seed=3)
    SCVI.setup_anndata(a, batch_key="batch")
    return a


def test_scarches_architecture_is_passed_through(adata):
    model = SCVI(adata, n_hidden=16, n_latent=3, use_layer_norm="both", use_batch_norm="none")
    norms = [type(m).__name__ for m in model.module.modules()]
    assert "LayerNorm" in norms and "BatchNorm1d" not in norms
    enc_only = SCVI(adata, n_hidden=16, n_latent=3, use_batch_norm="encoder")
    assert any(type(m).__name__ == "BatchNorm1d" for m in enc_only.module.z_encoder.modules())
    assert not any(type(m).__name__ == "BatchNorm1d" for m in enc_only.module.decoder.modules())
    with pytest.raises(InvalidParameterError, match="use_layer_norm"):
        SCVI(adata, use_layer_norm="sometimes")


def test_train_keywords_of_scvi_tools(adata):
    model = SCVI(adata, n_hidden=16, n_latent=3)
    with pytest.warns(UserWarning, match="load_sparse_tensor"):
        model.train(
            max_epochs=2,
            accelerator="cpu",
            devices=1,
            early_stopping=True,
            early_stopping_monitor="elbo_validation",
            early_stopping_min_delta=0.0,
            load_sparse_tensor=True,
        )
    assert len(model.history) == 2
    fresh = SCVI(adata, n_hidden=16, n_latent=3)
    before = {k: v.clone() for k, v in fresh.module.state_dict().items()}
    for bad, match in [
        ({"not_a_keyword": 1}, "not_a_keyword"),
        ({"lr": 1e-3}, "plan_kwargs"),
        ({"early_stopping_monitor": "reconstruction_loss_validation"}, "early_stopping_monitor"),
        ({"devices": 2}, "devices"),
        ({"accelerator": "gpu"}, "settings.device"),
    ]:
        with pytest.raises(InvalidParameterError, match=match):
            fresh.train(max_epochs=1, **bad)
    assert not fresh.is_trained and len(fresh.history) == 0  # refused before any step
    for k, v in fresh.module.state_dict().items():
        assert np.array_equal(v.numpy(), before[k].numpy()), k


def test_latent_outputs_like_scvi_tools(adata):
    model = SCVI(adata, n_hidden=16, n_latent=3, gene_likelihood="zinb")
    model.train(max_epochs=1)
    mean, var = model.get_latent_representation(return_dist=True, give_mean=False)
    assert mean.shape == var.shape == (adata.n_obs, 3) and (var > 0).all()
    np.testing.assert_allclose(mean, model.get_latent_representation(obsm_key=None), rtol=1e-6)
    view = adata[:50]
    with pytest.warns(UserWarning, match="view"):
        z = model.get_latent_representation(view)
    assert view.is_view and z.shape == (50, 3)  # still a view: nothing written to it
    dropout = model.get_likelihood_parameters(indices=np.arange(10))["dropout"]
    assert dropout.shape == (10, 30) and (dropout > 0).all() and (dropout < 1).all()  # probabilities


def test_scanvi_from_scvi_model_with_classifier_options(adata):
    adata.obs["labels"] = adata.obs["cell_type"].astype(str)
    adata.obs.loc[adata.obs_names[::3], "labels"] = "Unknown"
    SCVI.setup_anndata(adata, batch_key="batch", labels_key="labels")
    vae = SCVI(adata, n_hidden=16, n_latent=3)
    vae.train(max_epochs=1)
    lin = SCANVI.from_scvi_model(vae, "Unknown", linear_classifier=True)
    assert lin.module.classifier.hidden is None
    mlp = SCANVI.from_scvi_model(vae, "Unknown", classifier_parameters={"n_hidden": 8, "n_layers": 2})
    assert len(mlp.module.classifier.hidden.linears) == 2 and mlp.module.classifier.out.in_features == 8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp.train(max_epochs=1)
    labelled = adata.obs["labels"].to_numpy() != "Unknown"
    soft = mlp.predict(soft=True)
    hard = mlp.predict()  # the classifier for every cell, labelled ones too (scvi-tools' default)
    np.testing.assert_array_equal(hard, soft.columns.to_numpy()[soft.to_numpy().argmax(1)])
    kept = mlp.predict(keep_observed=True)
    np.testing.assert_array_equal(kept[labelled], adata.obs["labels"].to_numpy()[labelled])


def test_poisson_gene_selection_matches_scvi_tools():
    import anndata
    import pandas as pd
    from tests.model.test_scvi_tools_format import FIXTURES

    a = anndata.read_h5ad(FIXTURES / "data.h5ad")
    ref = pd.read_csv(FIXTURES / "poisson_gene_selection.csv", index_col=0)
    df = cellvi.data.poisson_gene_selection(a, n_top_genes=10, inplace=False, batch_key="batch")
    for col in ["observed_fraction_zeros", "expected_fraction_zeros"]:
        np.testing.assert_allclose(df[col], ref[col], atol=1e-6)
    # scvi-tools estimates the enrichment from 10,000 Bernoulli draws; cellvi computes its expectation
    np.testing.assert_allclose(df["prob_zero_enrichment"], ref["prob_zero_enrichment"], atol=0.02)
    assert (df["highly_variable"] == ref["highly_variable"]).mean() >= 0.9
    cellvi.data.poisson_gene_selection(a, n_top_genes=10, batch_key="batch", subset=True)
    assert a.n_vars == 10 and a.uns["hvg"] == {"flavor": "poisson_zeros"}


def test_de_weights_and_logging_dir(adata, tmp_path):
    cellvi.settings.logging_dir = tmp_path / "logs"
    try:
        model = SCVI(adata, n_hidden=16, n_latent=3)
        model.train(max_epochs=2)
    finally:
        cellvi.settings.logging_dir = None
    logs = list((tmp_path / "logs").glob("SCVI_*/history.csv"))
    assert len(logs) == 1 and len(logs[0].read_text().splitlines()) == 3
    with pytest.raises(cellvi.errors.InvalidTypeError):
        cellvi.settings.logging_dir = 3
    de = model.differential_expression(
        groupby="cell_type", group1="type0", weights="uniform", filter_outlier_cells=False, n_samples=50
    )
    assert len(de) == adata.n_vars
    small = {"max_cells": 16, "n_mc_samples": 5}  # scvi-tools' importance_weighting_kwargs names
    for other in ({"weights": "importance", "importance_weighting_kwargs": small}, {"filter_outlier_cells": True}):
        res = model.differential_expression(groupby="cell_type", group1="type0", n_samples=50, **other)
        assert list(res.columns) == list(de.columns)


def test_minify_adata_keeps_outputs_without_counts(adata, tmp_path):
    model = SCVI(adata, n_hidden=16, n_latent=3)
    model.train(max_epochs=2)
    latent = model.get_latent_representation(obsm_key=None)
    expr = model.get_normalized_expression(return_numpy=True)
    full = model.adata
    model.minify_adata()
    assert model.minified_data_type == "latent_posterior_parameters"
    mini = model.adata
    assert mini is not full and mini.X.nnz == 0 and full.X.nnz > 0  # the user's AnnData keeps its counts
    np.testing.assert_allclose(mini.obs["observed_lib_size"], np.asarray(full.X.sum(1)).ravel())
    np.testing.assert_array_equal(model.get_latent_representation(obsm_key=None), latent)
    np.testing.assert_allclose(model.get_normalized_expression(return_numpy=True), expr, rtol=1e-5, atol=1e-7)
    assert model.get_normalized_expression(n_samples=3, return_numpy=True).shape == expr.shape
    with pytest.raises(InvalidParameterError, match="minified"):
        model.train(max_epochs=1)
    with pytest.raises(InvalidParameterError, match="minified"):
        model.get_elbo()
    assert np.isfinite(model.get_elbo(adata=full))  # the full data still works with the same model
    model.save(tmp_path / "mini", save_anndata=True)
    loaded = SCVI.load(tmp_path / "mini")
    assert loaded.minified_data_type == "latent_posterior_parameters" and loaded.adata.X.nnz == 0
    np.testing.assert_array_equal(loaded.get_latent_representation(obsm_key=None), latent)


def test_temperature_scaling_of_scanvi():
    from cellvi.analysis.calibration import expected_calibration_error, fit_temperature

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 2000)
    logits = rng.normal(size=(2000, 3))
    logits[np.arange(2000), labels] += 1.0
    over = logits * 4  # an over-confident classifier: the true temperature is 4
    assert abs(fit_temperature(over, labels) - 4.0) < 0.4
    p = np.exp(over) / np.exp(over).sum(1, keepdims=True)
    assert expected_calibration_error(p, labels) > 0.1

    a = cellvi.data.simulate(n_cells=300, n_genes=30, n_batches=2, n_cell_types=3, seed=4)
    a.obs["labels"] = a.obs["cell_type"].astype(str)
    a.obs.loc[a.obs_names[::4], "labels"] = "Unknown"
    SCANVI.setup_anndata(a, labels_key="labels", unlabeled_category="Unknown", batch_key="batch")
    model = SCANVI(a, n_hidden=16, n_latent=3)
    with pytest.raises(InvalidParameterError, match="held-out"):
        SCANVI(a, n_hidden=16, n_latent=3).calibrate()
    model.train(max_epochs=5, train_size=0.7)
    hard = model.predict()
    report = model.calibrate()
    assert report["n_cells"] > 10 and report["temperature"] > 0
    assert report["nll_after"] <= report["nll_before"] + 1e-9  # the fitted temperature minimises it
    np.testing.assert_array_equal(model.predict(), hard)  # labels unchanged, probabilities rescaled


def test_view_anndata_setup_prints_the_registry(adata, capsys):
    model = SCVI(adata, n_hidden=8, n_latent=2)
    model.view_anndata_setup()
    out = capsys.readouterr().out
    assert "120 cells x 30 genes" in out and "batch_key: 'batch'" in out
    batches = list(adata.obs["batch"].astype("category").cat.categories)
    assert f"0: {batches[0]}, 1: {batches[1]}" in out
    assert "labels (none given: one category)" in out
    other = cellvi.data.simulate(n_cells=50, n_genes=30, n_batches=3, seed=1)
    with pytest.raises(cellvi.errors.NotSetUpError):
        model.view_anndata_setup(other)
    SCVI.setup_anndata(other, labels_key="cell_type")
    model.view_anndata_setup(other)
    out = capsys.readouterr().out
    assert "50 cells x 30 genes" in out and "labels (adata.obs['cell_type'])" in out


def test_feature_correlation_matrix_groups_co_expressed_genes():
    # strong, type-specific programs and little overdispersion, so that cell-to-cell co-variation shows
    # through the Gamma noise of the samples (150 epochs: the dispersion must be learnt first)
    a = cellvi.data.simulate(
        n_cells=400,
        n_genes=40,
        n_batches=2,
        n_cell_types=3,
        seed=0,
        de_fraction=0.5,
        de_lfc=3.0,
        dispersion=5.0,
        mean_log_sd=1.0,
    )
    SCVI.setup_anndata(a, batch_key="batch")
    model = SCVI(a, n_hidden=32, n_latent=4)
    model.train(max_epochs=150)
    var = a.var
    up = {
        t: np.flatnonzero((var["de_type"] == f"type{t}").to_numpy() & (var[f"de_lfc_type{t}"] > 0).to_numpy())
        for t in range(3)
    }
    same, other = [], []
    for kind in ("spearman", "pearson"):
        corr = model.get_feature_correlation_matrix(n_samples=3, correlation_type=kind, transform_batch="batch0")
        assert corr.shape == (40, 40) and list(corr.index) == list(a.var_names)
        C = corr.to_numpy()
        assert np.allclose(C, C.T, atol=1e-6) and np.allclose(np.diag(C), 1, atol=1e-6)
        for t, genes in up.items():
            same += [C[i, j] for i in genes for j in genes if i < j]
            other += [C[i, j] for i in genes for u in range(t + 1, 3) for j in up[u]]
    # genes up in the same cell type rise and fall together across cells; genes of different types do not
    assert len(same) > 10 and np.mean(same) > np.mean(other) + 0.15  # +0.26 to +0.46 measured over 3 seeds
    with pytest.raises(InvalidParameterError, match="correlation_type"):
        model.get_feature_correlation_matrix(correlation_type="kendall")


def test_to_device_moves_the_model(adata):
    model = SCVI(adata, n_hidden=8, n_latent=2)
    model.to_device("cpu")
    assert model.device.type == "cpu" and next(model.module.parameters()).device.type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(InvalidParameterError, match="no CUDA"):
            model.to_device("cuda:0")
        assert model.device.type == "cpu"


def test_latent_library_size(adata):
    totals = np.asarray(adata.X.sum(1)).reshape(-1, 1)
    observed = SCVI(adata, n_hidden=8, n_latent=2)
    np.testing.assert_allclose(observed.get_latent_library_size(), totals, rtol=1e-5)
    np.testing.assert_allclose(
        observed.get_latent_library_size(indices=[3, 1], give_mean=False), totals[[3, 1]], rtol=1e-5
    )
    latent = SCVI(adata, n_hidden=16, n_latent=2, use_observed_lib_size=False)
    latent.train(max_epochs=150)
    mean = latent.get_latent_library_size()
    assert mean.shape == (adata.n_obs, 1) and mean.dtype == np.float32
    # q(l | x) learns each cell's depth: its mean tracks the observed totals
    assert np.corrcoef(np.log(mean[:, 0]), np.log(totals[:, 0]))[0, 1] > 0.6  # 0.79-0.87 (untrained: -0.26-0.24)
    draws = latent.get_latent_library_size(give_mean=False)
    assert not np.allclose(draws, mean) and np.all(draws > 0)


def test_train_validation_and_test_indices_partition_the_cells(adata):
    model = SCVI(adata, n_hidden=8, n_latent=2)
    assert len(model.test_indices) == 0
    model.train(max_epochs=1, train_size=0.6, validation_size=0.25)
    parts = [model.train_indices, model.validation_indices, model.test_indices]
    assert [len(p) for p in parts] == [72, 30, 18]
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(adata.n_obs))
    model.train(max_epochs=1)
    assert len(model.test_indices) == 0 and len(model.train_indices) + len(model.validation_indices) == adata.n_obs


def test_get_ranked_features_orders_genes_by_mean_attribution(adata):
    adata.obs["labels"] = np.where(np.arange(adata.n_obs) % 3 == 0, "Unknown", "a")
    SCANVI.setup_anndata(adata, labels_key="labels", unlabeled_category="Unknown", batch_key="batch")
    model = SCANVI(adata, n_hidden=8, n_latent=2)
    attrs = np.random.default_rng(0).normal(size=(50, adata.n_vars)) + np.arange(adata.n_vars)[::-1] * 0.5
    table = model.get_ranked_features(attrs=attrs)
    assert list(table["feature_idx"][:5]) == list(np.argsort(-attrs.mean(0))[:5])
    assert list(table["feature"][:2]) == list(adata.var_names[table["feature_idx"][:2]])
    assert np.all(np.diff(table["attribution_mean"]) <= 0) and set(table["cells"]) == {50}
    with pytest.raises(InvalidParameterError, match="attrs must be"):
        model.get_ranked_features(attrs=attrs[:, :5])


def test_settings_of_scvi_tools_scripts(adata):
    import logging

    settings = cellvi.settings
    with pytest.warns(UserWarning, match="dl_num_workers is accepted .* and ignored"):
        settings.dl_num_workers = 4
    with pytest.raises(AttributeError, match="no setting 'seeed'"):
        settings.seeed = 0
    old = settings.verbosity
    try:
        settings.verbosity = "error"
        assert logging.getLogger("cellvi").getEffectiveLevel() == logging.ERROR
        settings.verbosity = logging.INFO
        assert settings.verbosity == logging.INFO
        with pytest.raises(InvalidParameterError):
            settings.verbosity = "loud"
    finally:
        settings.verbosity = old
    model = SCVI(adata, n_hidden=8, n_latent=2)
    seen = []
    original = model.module.latent
    model.module.latent = lambda batch, **kw: seen.append(len(batch["batch"])) or original(batch, **kw)
    try:
        settings.batch_size = 50
        model.get_latent_representation()
        assert seen == [50, 50, 20]  # 120 cells in minibatches of the setting
        with pytest.raises(InvalidParameterError):
            settings.batch_size = 0
    finally:
        settings.batch_size = None
    seen.clear()
    model.get_latent_representation()
    assert seen == [120]


def test_data_readers_as_scvi_tools_re_exports_them(tmp_path, adata):
    adata.write_h5ad(tmp_path / "a.h5ad")
    back = cellvi.data.read_h5ad(tmp_path / "a.h5ad")
    assert back.shape == adata.shape and list(back.var_names) == list(adata.var_names)
    assert callable(cellvi.data.read_csv) and callable(cellvi.data.read_loom) and callable(cellvi.data.read_text)


def test_likelihoods_per_cell_with_return_mean_false(adata):
    model = SCVI(adata, n_hidden=8, n_latent=2)
    model.train(max_epochs=2)
    torch.manual_seed(0)
    per_cell = model.get_elbo(return_mean=False)
    torch.manual_seed(0)
    assert per_cell.shape == (adata.n_obs,) and np.isclose(per_cell.mean(), model.get_elbo())
    rec = model.get_reconstruction_error(indices=[0, 5, 7], return_mean=False)["reconstruction_loss"]
    assert rec.shape == (3,) and np.all(rec > 0)
    torch.manual_seed(1)
    ll = model.get_marginal_ll(n_mc_samples=5, return_mean=False)
    torch.manual_seed(1)
    assert ll.shape == (adata.n_obs,) and np.isclose(ll.mean(), model.get_marginal_ll(n_mc_samples=5))


def test_query_mapping_with_scvi_tools_keywords(adata, tmp_path):
    ref = SCVI(adata, n_hidden=8, n_latent=2)
    ref.train(max_epochs=1)
    ref.save(tmp_path / "ref")
    query = cellvi.data.simulate(n_cells=40, n_genes=30, n_batches=1, seed=9)
    query.obs["batch"] = "new"
    query = query[:, list(adata.var_names[::-1])].copy()  # genes in another order
    model = SCVI.load_query_data(
        query, reference_model=str(tmp_path / "ref"), inplace_subset_query_vars=True, device="cpu"
    )
    assert list(query.var_names) == list(adata.var_names) and model.device.type == "cpu"
    model.train(max_epochs=1)
    assert SCVI.prepare_query_anndata(query, reference_model=ref, return_reference_var_names=True).equals(
        adata.var_names
    )
    with pytest.raises(InvalidParameterError, match="once"):
        SCVI.load_query_data(query, ref, reference_model=ref)
    with pytest.raises(InvalidParameterError, match="once"):
        SCVI.prepare_query_anndata(query)
    with pytest.raises(InvalidParameterError, match="accelerator"):
        SCVI.load_query_data(query, ref, accelerator="tpu")


def test_posterior_predictive_sample_in_another_batch(adata):
    model = SCVI(adata, n_hidden=8, n_latent=2, gene_likelihood="nb")
    model.train(max_epochs=20)
    batches = list(adata.obs["batch"].astype("category").cat.categories)
    first = (adata.obs["batch"].astype(str) == batches[0]).to_numpy()
    torch.manual_seed(0)
    moved = model.posterior_predictive_sample(n_samples=100, transform_batch=batches[1]).mean(-1)[first].sum(0)
    expected = {  # per-gene totals over batch0's cells of the NB means, decoded in each batch
        b: model.get_normalized_expression(library_size="latent", transform_batch=b, return_numpy=True)[first].sum(0)
        for b in batches
    }
    err = {b: np.abs(moved / expected[b] - 1).mean() for b in batches}
    assert err[batches[1]] < 0.1 and err[batches[1]] < err[batches[0]] / 2  # the draws follow batch1's means
    with pytest.raises(cellvi.errors.MissingKeyError):
        model.posterior_predictive_sample(transform_batch="nowhere")


def test_de_batchid_keywords_are_refused_by_name(adata):
    model = SCVI(adata, n_hidden=8, n_latent=2)
    with pytest.raises(InvalidParameterError, match="batchid1/batchid2 are not supported"):
        model.differential_expression(groupby="cell_type", batch_correction=True, batchid1=["batch0"])


def test_load_takes_scvi_tools_device_keywords(adata, tmp_path):
    model = SCVI(adata, n_hidden=8, n_latent=2)
    model.save(tmp_path / "m")
    for kwargs in ({"accelerator": "cpu"}, {"device": "auto"}, {"accelerator": "auto", "device": "cpu"}):
        assert SCVI.load(tmp_path / "m", adata, **kwargs).device.type == "cpu"
    with pytest.raises(InvalidParameterError, match="accelerator"):
        SCVI.load(tmp_path / "m", adata, accelerator="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InvalidParameterError, match="no CUDA"):
            SCVI.load(tmp_path / "m", adata, device=0)
