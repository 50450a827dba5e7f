import numpy as np
import pandas as pd
import pytest
import torch

import cellvi
from cellvi.errors import InvalidParameterError, MissingKeyError, ModelFileError
from cellvi.model import SCVI


def _trained(adata, epochs=3, **kwargs):
    SCVI.setup_anndata(adata, batch_key="batch")
    model = SCVI(adata, n_hidden=32, n_latent=5, **kwargs)
    model.train(max_epochs=epochs, batch_size=64)
    return model


def test_workflow_stores_latent_and_history(small_adata):
    model = _trained(small_adata)
    latent = model.get_latent_representation(small_adata)
    assert latent.shape == (small_adata.n_obs, 5)
    np.testing.assert_array_equal(small_adata.obsm["X_scvi"], latent)
    hist = model.history
    assert len(hist) == 3
    for col in ["elbo_train", "reconstruction_loss_train", "kl_local_train", "epoch_end_s"]:
        assert col in hist.columns and np.isfinite(hist[col]).all()
    # validation runs after the last epoch unless asked for more often (or early stopping is on)
    for col in ["elbo_validation", "reconstruction_loss_validation", "kl_local_validation"]:
        assert hist[col].isna().tolist() == [True, True, False]
    assert hist["elbo_train"].iloc[-1] < hist["elbo_train"].iloc[0]  # scvi-tools' sign: the negative ELBO
    # scvi-tools' shape: a dict of one-column DataFrames indexed by epoch
    assert model.history_["elbo_train"].columns.tolist() == ["elbo_train"]
    np.testing.assert_array_equal(model.history_["elbo_train"]["elbo_train"], hist["elbo_train"])
    assert model.history_["train_loss"].index.name == "epoch"


def test_summary_says_what_the_model_is(small_adata):
    one_batch = small_adata.copy()
    SCVI.setup_anndata(small_adata, batch_key="batch")
    model = SCVI(small_adata, n_latent=4)
    text = model.summary_string
    assert text == repr(model)
    assert "n_latent=4" in text and "400 cells x 100 genes, 2 batches, 1 label;" in text
    assert text.endswith("trained: False")
    SCVI.setup_anndata(one_batch)
    assert ", 1 batch, 1 label;" in repr(SCVI(one_batch))


def test_check_val_every_n_epoch(small_adata):
    cellvi.model.SCVI.setup_anndata(small_adata, batch_key="batch")
    model = cellvi.model.SCVI(small_adata, n_latent=5, n_hidden=32)
    model.train(max_epochs=5, check_val_every_n_epoch=2)
    assert model.history["elbo_validation"].notna().tolist() == [False, True, False, True, True]
    model.train(max_epochs=3, early_stopping=True)
    assert model.history["elbo_validation"].notna().all()


def test_validation_does_not_change_training(small_adata):
    latents = []
    for every in (None, 1):
        cellvi.settings.seed = 0
        a = small_adata.copy()
        SCVI.setup_anndata(a, batch_key="batch")
        model = SCVI(a, n_latent=5, n_hidden=32)
        model.train(max_epochs=3, check_val_every_n_epoch=every)
        latents.append(model.get_latent_representation())
    np.testing.assert_array_equal(latents[0], latents[1])


def test_latent_not_stored_when_asked(small_adata):
    model = _trained(small_adata, epochs=1)
    model.get_latent_representation(small_adata, obsm_key=None)
    assert "X_scvi" not in small_adata.obsm
    model.get_latent_representation(small_adata, indices=[0, 1])
    assert "X_scvi" not in small_adata.obsm


def test_outputs_have_documented_shapes(small_adata):
    model = _trained(small_adata, epochs=2)
    n, g = small_adata.shape
    expr = model.get_normalized_expression()
    assert isinstance(expr, pd.DataFrame) and expr.shape == (n, g)
    np.testing.assert_allclose(expr.sum(1), 1.0, rtol=1e-4)
    genes = list(small_adata.var_names[:4])
    sub = model.get_normalized_expression(indices=np.arange(10), gene_list=genes, library_size=1e4)
    assert list(sub.columns) == genes and sub.shape == (10, 4)
    np.testing.assert_allclose(sub.values, expr.loc[sub.index, genes].values * 1e4, rtol=1e-4)
    samples = model.get_normalized_expression(n_samples=3, return_mean=False)
    assert samples.shape == (3, n, g)
    assert model.posterior_predictive_sample().shape == (n, g)
    assert model.posterior_predictive_sample(n_samples=2).shape == (n, g, 2)
    params = model.get_likelihood_parameters()
    assert set(params) == {"mean", "dispersions", "dropout"} and params["mean"].shape == (n, g)
    cellvi.settings.seed = 0
    elbo = model.get_elbo()
    assert elbo < 0 and np.isfinite(elbo)
    cellvi.settings.seed = 0  # the same posterior draws: -ELBO = reconstruction loss + KL
    rec = model.get_reconstruction_error()["reconstruction_loss"]
    assert rec > 0 and -elbo > rec
    mll = model.get_marginal_ll(n_mc_samples=20)
    assert elbo - 5 < mll < 0  # importance sampling is at least as tight as the ELBO, up to noise


@pytest.mark.parametrize("library_size", [1, 1e4, "latent"])
def test_expression_written_in_place_equals_the_general_path(small_adata, library_size):
    """All genes, one sample, own batch is decoded straight into the result; a gene list in another
    order goes through the general path (decode, select, copy). Both must agree, and blocks that are
    not the first must land in their own rows (batch_size smaller than the data)."""
    model = _trained(small_adata, epochs=2)
    reversed_genes = list(small_adata.var_names[::-1])
    kw = dict(library_size=library_size, batch_size=48, return_numpy=True)
    direct = model.get_normalized_expression(**kw)
    general = model.get_normalized_expression(gene_list=reversed_genes, **kw)
    np.testing.assert_allclose(direct, general[:, ::-1], rtol=1e-5)
    stacked = model.get_normalized_expression(return_mean=False, **kw)
    assert stacked.shape == (1, *direct.shape)
    np.testing.assert_array_equal(stacked[0], direct)
    sub = model.get_normalized_expression(indices=np.arange(5, 105), **kw)
    np.testing.assert_allclose(sub, direct[5:105], rtol=1e-5)


def test_batch_corrected_expression_is_the_same_for_every_batch(small_adata):
    model = _trained(small_adata, epochs=2)
    corrected = model.get_batch_corrected_expression(return_numpy=True)
    as_b0 = model.get_normalized_expression(transform_batch="batch0", return_numpy=True)
    as_b1 = model.get_normalized_expression(transform_batch="batch1", return_numpy=True)
    np.testing.assert_allclose(corrected, (as_b0 + as_b1) / 2, rtol=1e-4, atol=1e-7)
    with pytest.raises(MissingKeyError):
        model.get_normalized_expression(transform_batch="nope")


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(gene_likelihood="nb", dispersion="gene-batch"),
        dict(gene_likelihood="poisson"),
        dict(dispersion="gene-cell", latent_distribution="ln"),
        dict(dispersion="gene-label", use_observed_lib_size=False, encode_covariates=True, n_layers=2),
    ],
)
def test_model_variants_train(small_adata, kwargs):
    model = _trained(small_adata, epochs=2, **kwargs)
    assert np.isfinite(model.history["elbo_train"]).all()
    assert np.isfinite(model.get_latent_representation()).all()
    assert np.isfinite(model.get_marginal_ll(n_mc_samples=3))


def test_covariates(small_adata):
    small_adata.obs["donor"] = np.where(np.arange(small_adata.n_obs) % 3 == 0, "d1", "d2")
    small_adata.obs["pct_mito"] = np.linspace(0, 1, small_adata.n_obs)
    SCVI.setup_anndata(
        small_adata, batch_key="batch", categorical_covariate_keys=["donor"], continuous_covariate_keys=["pct_mito"]
    )
    model = SCVI(small_adata, n_hidden=16)
    model.train(max_epochs=2)
    assert np.isfinite(model.get_latent_representation()).all()


def test_single_cell_last_minibatch_does_not_crash(small_adata):
    adata = small_adata[:129].copy()
    SCVI.setup_anndata(adata)
    model = SCVI(adata, n_hidden=16)
    model.train(max_epochs=2, batch_size=128, train_size=1.0)
    assert "elbo_validation" not in model.history


def test_seed_reproduces_training(small_adata):
    def run(seed):
        cellvi.settings.seed = seed
        a = small_adata.copy()
        return _trained(a, epochs=2).get_latent_representation()

    np.testing.assert_array_equal(run(5), run(5))
    assert not np.array_equal(run(5), run(6))


def test_save_load_round_trip_is_exact(small_adata, tmp_path):
    model = _trained(small_adata, epochs=2)
    latent = model.get_latent_representation()
    model.save(tmp_path / "m", save_anndata=True)
    with pytest.raises(ModelFileError, match="exists"):
        model.save(tmp_path / "m")
    model.save(tmp_path / "m", overwrite=True, save_anndata=True)
    again = SCVI.load(tmp_path / "m", adata=small_adata.copy())
    np.testing.assert_array_equal(again.get_latent_representation(), latent)
    from_file = SCVI.load(tmp_path / "m")
    np.testing.assert_array_equal(from_file.get_latent_representation(), latent)
    assert list(from_file.history.columns) == list(model.history.columns)
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary folders left behind


@pytest.mark.parametrize(
    "kwargs", [dict(n_latent=0), dict(gene_likelihood="gaussian"), dict(dispersion="cell"), dict(dropout_rate=1.5)]
)
def test_invalid_hyper_parameters(small_adata, kwargs):
    SCVI.setup_anndata(small_adata)
    with pytest.raises(InvalidParameterError):
        SCVI(small_adata, **kwargs)


def test_invalid_training_arguments(small_adata):
    SCVI.setup_anndata(small_adata)
    model = SCVI(small_adata)
    for kwargs in [dict(batch_size=0), dict(max_epochs=0), dict(train_size=0), dict(plan_kwargs={"lrr": 1})]:
        with pytest.raises(InvalidParameterError):
            model.train(**kwargs)


def test_early_stopping_stops(small_adata):
    SCVI.setup_anndata(small_adata)
    model = SCVI(small_adata, n_hidden=16)
    model.train(max_epochs=200, early_stopping=True, early_stopping_patience=2, plan_kwargs={"lr": 5e-2})
    assert len(model.history) < 200


def test_checkpoint_resume_equals_uninterrupted(small_adata, tmp_path):
    def fresh():
        cellvi.settings.seed = 0
        a = small_adata.copy()
        SCVI.setup_anndata(a, batch_key="batch")
        return SCVI(a, n_hidden=16)

    full = fresh()
    full.train(max_epochs=4, check_val_every_n_epoch=1)
    part = fresh()
    part.train(max_epochs=2, checkpoint_dir=tmp_path, checkpoint_every=1, check_val_every_n_epoch=1)
    resumed = fresh()
    resumed.train(max_epochs=4, checkpoint_dir=tmp_path, checkpoint_every=1, resume=True, check_val_every_n_epoch=1)
    np.testing.assert_array_equal(resumed.get_latent_representation(), full.get_latent_representation())
    pd.testing.assert_frame_equal(resumed.history.drop(columns="epoch_end_s"), full.history.drop(columns="epoch_end_s"))


def test_outputs_follow_the_order_of_indices(small_adata):
    model = _trained(small_adata, epochs=1)
    full = model.get_latent_representation()
    np.testing.assert_allclose(
        model.get_latent_representation(indices=[5, 3, 9]), full[[5, 3, 9]], rtol=1e-5, atol=1e-6
    )
    expr = model.get_normalized_expression(indices=[7, 2])
    assert list(expr.index) == list(small_adata.obs_names[[7, 2]])


def test_callbacks_see_each_epoch_and_can_stop(small_adata):
    SCVI.setup_anndata(small_adata)
    model = SCVI(small_adata, n_hidden=16)
    seen = []
    model.train(max_epochs=10, callbacks=[lambda epoch, row: seen.append(row["elbo_train"]) or epoch == 2])
    assert len(seen) == 3 and len(model.history) == 3


@pytest.mark.parametrize("encode_covariates", [False, True])
@pytest.mark.parametrize("fmt", ["csr", "dense"])
def test_latent_from_sparse_counts_equals_dense(small_adata, encode_covariates, fmt):
    """get_latent_representation and expression multiply the sparse counts in the first layer; the same
    numbers as densifying them, for any storage of X (explicitly stored zeros included)."""
    import scipy.sparse as sp

    from cellvi.data.loaders import MinibatchLoader

    a = small_adata.copy()
    X = sp.csr_matrix(a.X)
    X.data[::7] = 0.0  # explicitly stored zeros
    X.data[X.indptr[3] : X.indptr[4]] = 0.0  # and a cell without counts (its library sums to 0)
    a.X = X if fmt == "csr" else X.toarray()
    SCVI.setup_anndata(a, batch_key="batch")
    model = SCVI(a, n_latent=4, n_hidden=16, encode_covariates=encode_covariates)
    model.train(max_epochs=2)
    model.module.eval()
    data = model._cell_data()
    dense_means = None
    for give_mean in (True, False):
        out = []
        for sparse in (False, True):
            torch.manual_seed(0)
            loader = MinibatchLoader(data, batch_size=64, likelihood_terms=False, sparse_counts=sparse)
            out.append(torch.cat([model.module.latent(b, give_mean=give_mean) for b in loader]))
            assert ("X_csr" in next(iter(loader))) is sparse
        torch.testing.assert_close(out[1], out[0], rtol=1e-5, atol=1e-5)
        dense_means = out[0] if give_mean else dense_means
    for latent_library in (False, True):  # proportions; mean counts at the observed library
        out = [
            torch.cat(
                [
                    model.module.expression(b, None, latent_library)
                    for b in MinibatchLoader(data, batch_size=64, likelihood_terms=False, sparse_counts=sparse)
                ]
            )
            for sparse in (False, True)
        ]
        torch.testing.assert_close(out[1], out[0], rtol=1e-5, atol=1e-5)
    z = model.get_latent_representation()  # the public path, which takes the sparse counts
    assert z.dtype == np.float32
    np.testing.assert_allclose(z, dense_means.numpy(), rtol=1e-5, atol=1e-5)
    # the sparse first layer keeps its transposed weight between calls: a changed weight must be seen
    with torch.no_grad():
        model.module.z_encoder.encoder.linears[0].weight.mul_(1.5)
    torch.manual_seed(0)
    dense = torch.cat([model.module.latent(b) for b in MinibatchLoader(data, batch_size=64, likelihood_terms=False)])
    assert not np.allclose(dense.numpy(), z, atol=1e-3)
    np.testing.assert_allclose(model.get_latent_representation(), dense.numpy(), rtol=1e-5, atol=1e-5)
