"""The catalogue of bad inputs (docs/errors.md): each gives a short, clear CellviError that is also a
built-in exception type, and leaves the user's AnnData unchanged; the inputs that must work do."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from cellvi.errors import (
    CellviError,
    InvalidDataError,
    InvalidParameterError,
    InvalidTypeError,
    MissingKeyError,
    NotSetUpError,
    RegistryMismatchError,
)
from cellvi.model import SCVI

from ._helpers import assert_adata_unchanged, make_adata, snapshot

SMALL = dict(n_hidden=8, n_latent=3)


def expect_error(adata, call, err_type, builtin, words):
    """``call()`` raises ``err_type`` (a CellviError and ``builtin``) whose short message contains every
    word of ``words`` (the problem and the fix), and ``adata`` is left exactly as it was."""
    before = snapshot(adata)
    with pytest.raises(err_type) as info:
        call()
    err = info.value
    assert isinstance(err, CellviError) and isinstance(err, builtin)
    msg = str(err)
    assert len(msg) < 400, msg
    for word in words:
        assert word.lower() in msg.lower(), (word, msg)
    assert_adata_unchanged(before, adata)
    return msg


def train_and_embed(adata, epochs=1, **setup):
    SCVI.setup_anndata(adata, **setup)
    model = SCVI(adata, **SMALL)
    model.train(max_epochs=epochs, batch_size=32)
    latent = model.get_latent_representation()
    assert latent.shape == (adata.n_obs, 3) and np.isfinite(latent).all()
    assert np.isfinite(model.history["elbo_train"]).all()
    return model, latent


# ---------------------------------------------------------------------------------------------- counts
@pytest.mark.parametrize("fmt", ["dense", "csr", "csc"])
@pytest.mark.parametrize("where", ["X", "layer"])
@pytest.mark.parametrize(
    "value, words",
    [
        (-1.0, ["negative", "raw counts"]),
        (0.5, ["non-integer", "raw counts"]),
        (np.nan, ["NaN", "fix"]),
        (np.inf, ["infinite", "fix"]),
        (-np.inf, ["infinite", "fix"]),
    ],
)
def test_bad_counts(fmt, where, value, words):
    a = make_adata(fmt="dense")
    X = a.X.copy()
    X[3, 2] = value
    conv = {"dense": np.asarray, "csr": sp.csr_matrix, "csc": sp.csc_matrix}[fmt]
    if where == "X":
        a.X = conv(X)
        kwargs = {}
    else:
        a.layers["counts"] = conv(X)
        kwargs = {"layer": "counts"}
    msg = expect_error(a, lambda: SCVI.setup_anndata(a, **kwargs), InvalidDataError, ValueError, words)
    assert msg.startswith("adata.layers['counts']" if where == "layer" else "adata.X")  # names where


def test_negative_integer_counts():
    a = make_adata(fmt="dense", dtype=np.int32)
    a.X[0, 0] = -3
    expect_error(a, lambda: SCVI.setup_anndata(a), InvalidDataError, ValueError, ["negative"])


@pytest.mark.parametrize("dtype", [bool, object])
def test_non_numeric_counts(dtype):
    a = make_adata(fmt="dense")
    a.X = (a.X > 0).astype(dtype)
    expect_error(a, lambda: SCVI.setup_anndata(a), InvalidTypeError, TypeError, ["dtype", "numeric"])


@pytest.mark.parametrize("shape, word", [((0, 5), "0 cells"), ((5, 0), "0 genes"), ((0, 0), "empty")])
def test_empty_anndata(shape, word):
    a = ad.AnnData(np.zeros(shape, dtype=np.float32))
    expect_error(a, lambda: SCVI.setup_anndata(a), InvalidDataError, ValueError, [word, "at least"])


@pytest.mark.parametrize("fmt", ["dense", "csr"])
def test_all_zero_matrix(fmt):
    a = make_adata(fmt=fmt)
    a.X = a.X * 0
    expect_error(a, lambda: SCVI.setup_anndata(a), InvalidDataError, ValueError, ["zero", "raw counts"])


def test_cell_with_zero_counts_works():
    a = make_adata(fmt="dense")
    a.X[5] = 0
    _, latent = train_and_embed(a, batch_key="batch")
    assert np.isfinite(latent[5]).all()


def test_gene_with_zero_counts_everywhere_works():
    a = make_adata(fmt="csr")
    X = a.X.toarray()
    X[:, 4] = 0
    a.X = sp.csr_matrix(X)
    model, _ = train_and_embed(a)
    expr = model.get_normalized_expression(return_numpy=True)
    assert np.isfinite(expr).all()


def test_null_X_without_layer():
    a = make_adata()
    a.layers["counts"] = a.X.copy()
    a.X = None
    expect_error(a, lambda: SCVI.setup_anndata(a), MissingKeyError, KeyError, ["adata.X", "layer="])
    SCVI.setup_anndata(a, layer="counts")


# ---------------------------------------------------------------------------------------------- keys
@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(layer="counts"), "counts"),
        (dict(batch_key="donor"), "donor"),
        (dict(labels_key="celltype"), "celltype"),
        (dict(size_factor_key="sf"), "sf"),
        (dict(categorical_covariate_keys=["cat", "site"]), "site"),
        (dict(continuous_covariate_keys=["pct_mito"]), "pct_mito"),
    ],
)
def test_missing_keys_or_layers(kwargs, name):
    a = make_adata()
    expect_error(a, lambda: SCVI.setup_anndata(a, **kwargs), MissingKeyError, KeyError, [name, "available"])


@pytest.mark.parametrize("key", ["batch", "labels", "cat"])
@pytest.mark.parametrize("categorical", [False, True])
def test_nan_in_category_columns(key, categorical):
    a = make_adata()
    col = a.obs[key].astype(object)
    col.iloc[7] = np.nan
    a.obs[key] = col.astype("category") if categorical else col
    kwargs = {
        "batch": dict(batch_key="batch"),
        "labels": dict(labels_key="labels"),
        "cat": dict(categorical_covariate_keys=["cat"]),
    }[key]
    expect_error(a, lambda: SCVI.setup_anndata(a, **kwargs), InvalidDataError, ValueError, [key, "missing", "fill"])


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_in_continuous_covariate(value):
    a = make_adata()
    a.obs.loc[a.obs_names[4], "cont"] = value
    expect_error(
        a,
        lambda: SCVI.setup_anndata(a, continuous_covariate_keys=["cont"]),
        InvalidDataError,
        ValueError,
        ["cont", "NaN", "fill"],
    )


def test_non_numeric_continuous_covariate():
    a = make_adata()
    expect_error(
        a,
        lambda: SCVI.setup_anndata(a, continuous_covariate_keys=["labels"]),
        InvalidDataError,
        ValueError,
        ["labels", "numeric"],
    )


@pytest.mark.parametrize("value", [0.0, -1.0, np.nan])
def test_bad_size_factors(value):
    a = make_adata()
    a.obs["sf"] = 1.0
    a.obs.loc[a.obs_names[2], "sf"] = value
    expect_error(a, lambda: SCVI.setup_anndata(a, size_factor_key="sf"), InvalidDataError, ValueError, ["sf"])


def test_duplicated_gene_names():
    a = make_adata()
    a.var_names = ["g"] * 2 + [f"gene{i}" for i in range(2, a.n_vars)]
    words = ["duplicated", "var_names_make_unique"]
    expect_error(a, lambda: SCVI.setup_anndata(a), InvalidDataError, ValueError, words)


def test_model_on_data_not_set_up():
    a = make_adata()
    expect_error(a, lambda: SCVI(a), NotSetUpError, ValueError, ["setup_anndata"])


# ---------------------------------------------------------------------------------------------- awkward but valid
def test_single_batch_works():
    train_and_embed(make_adata(n_batches=1), batch_key="batch")


@pytest.mark.parametrize("observed_lib", [True, False])
def test_batch_of_one_cell_works(observed_lib):
    a = make_adata()
    a.obs.loc[a.obs_names[10], "batch"] = "lonely"
    SCVI.setup_anndata(a, batch_key="batch")
    model = SCVI(a, use_observed_lib_size=observed_lib, **SMALL)
    model.train(max_epochs=1, batch_size=32)
    assert np.isfinite(model.get_latent_representation()).all()
    assert np.isfinite(model.get_elbo())


def test_every_cell_unlabelled_works():
    a = make_adata()
    a.obs["labels"] = "Unknown"
    train_and_embed(a, labels_key="labels", batch_key="batch")


@pytest.mark.parametrize("fmt", ["dense", "csr", "csc", "backed-dense", "backed-csr", "backed-csc"])
@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint16, np.float32, np.float64])
def test_storage_formats_and_dtypes_work(fmt, dtype, tmp_path):
    backed = fmt.startswith("backed")
    base = fmt.split("-")[-1]
    a = make_adata(n_cells=50, n_genes=12, fmt=base, dtype=dtype)
    if backed:
        path = tmp_path / "data.h5ad"
        a.write_h5ad(path)
        mtime = path.stat().st_mtime_ns
        a = ad.read_h5ad(path, backed="r")
    if fmt == "backed-csc":  # refused by design: reading cells from column-major storage reads everything
        with pytest.raises(InvalidDataError, match="CSR"):
            train_and_embed(a, batch_key="batch")
        assert path.stat().st_mtime_ns == mtime
        return
    model, latent = train_and_embed(a, batch_key="batch")
    if backed:
        assert path.stat().st_mtime_ns == mtime  # the user's file was only read
    reference = make_adata(n_cells=50, n_genes=12, fmt="dense", dtype=np.float32)
    np.testing.assert_array_equal(  # the storage does not change what the model sees
        model.get_latent_representation(reference), latent
    )


# ---------------------------------------------------------------------------------------------- parameters
@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(n_latent=0), ["n_latent", "positive"]),
        (dict(n_hidden=-4), ["n_hidden", "positive"]),
        (dict(n_layers=1.5), ["n_layers", "positive"]),
        (dict(n_latent=True), ["n_latent", "positive"]),
        (dict(gene_likelihood="gaussian"), ["gene_likelihood", "zinb"]),
        (dict(dispersion="cell"), ["dispersion", "gene-batch"]),
        (dict(latent_distribution="vmf"), ["latent_distribution", "normal"]),
        (dict(dropout_rate=1.0), ["dropout_rate", "[0, 1)"]),
    ],
)
def test_invalid_model_parameters(kwargs, words):
    a = make_adata()
    SCVI.setup_anndata(a)
    expect_error(a, lambda: SCVI(a, **kwargs), InvalidParameterError, ValueError, words)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(batch_size=0), ["batch_size", "positive"]),
        (dict(max_epochs=0), ["max_epochs", "positive"]),
        (dict(max_epochs=2.5), ["max_epochs", "positive"]),
        (dict(train_size=0.0), ["train_size", "(0, 1]"]),
        (dict(train_size=0.8, validation_size=0.5), ["validation_size"]),
        (dict(plan_kwargs={"learning_rate": 1e-3}), ["learning_rate", "valid"]),
        (dict(plan_kwargs={"lr": 0}), ["lr", "> 0"]),
        (dict(checkpoint_every=0, checkpoint_dir="ck"), ["checkpoint_every", "positive"]),
        (dict(early_stopping_patience=0, early_stopping=True), ["early_stopping_patience", "positive"]),
        (dict(resume=True), ["resume", "checkpoint_dir"]),
    ],
)
def test_invalid_training_parameters(kwargs, words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = make_adata()
    SCVI.setup_anndata(a)
    model = SCVI(a, **SMALL)
    expect_error(a, lambda: model.train(**kwargs), InvalidParameterError, ValueError, words)
    assert not model.is_trained and not (tmp_path / "ck").exists()


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda m: m.get_latent_representation(batch_size=0), ["batch_size"]),
        (lambda m: m.get_normalized_expression(library_size=-1), ["library_size"]),
        (lambda m: m.get_normalized_expression(transform_batch="b9"), ["b9", "batches"]),
        (lambda m: m.get_normalized_expression(gene_list=["nope"]), ["nope"]),
        (lambda m: m.get_marginal_ll(n_mc_samples=0), ["n_mc_samples"]),
    ],
)
def test_invalid_output_arguments(call, words):
    a = make_adata()
    SCVI.setup_anndata(a, batch_key="batch")
    model = SCVI(a, **SMALL)
    with pytest.raises(CellviError) as info:
        call(model)
    assert isinstance(info.value, (ValueError, KeyError))
    for word in words:
        assert word in str(info.value)


# ---------------------------------------------------------------------------------------------- new data
@pytest.fixture
def trained():
    a = make_adata()
    SCVI.setup_anndata(a, batch_key="batch", labels_key="labels", categorical_covariate_keys=["cat"])
    model = SCVI(a, **SMALL)
    model.train(max_epochs=1, batch_size=32)
    return model


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda a: a[:, 2:].copy(), ["missing", "prepare_query_anndata"]),
        (lambda a: a[:, ::-1].copy(), ["order", "reorder"]),
        (lambda a: ad.concat([a, make_adata(n_genes=22)[:, 20:]], axis=1, merge="first"), ["extra", "subset"]),
    ],
)
def test_new_data_with_other_genes(trained, edit, words):
    new = edit(make_adata(seed=3))
    expect_error(new, lambda: trained.get_latent_representation(new), RegistryMismatchError, ValueError, words)


@pytest.mark.parametrize("key", ["batch", "labels", "cat"])
def test_new_data_with_unknown_categories(trained, key):
    new = make_adata(seed=3)
    new.obs.loc[new.obs_names[0], key] = "never-seen"
    expect_error(
        new,
        lambda: trained.get_latent_representation(new),
        RegistryMismatchError,
        ValueError,
        ["never-seen", "load_query_data"],
    )


def test_new_data_with_bad_counts(trained):
    new = make_adata(seed=3, fmt="dense")
    new.X[1, 1] = 0.25
    expect_error(new, lambda: trained.get_latent_representation(new), InvalidDataError, ValueError, ["non-integer"])


def test_new_data_without_cells(trained):
    new = make_adata(seed=3)[:0].copy()
    expect_error(new, lambda: trained.get_latent_representation(new), InvalidDataError, ValueError, ["no cells"])
