import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellvi.data import Registry
from cellvi.errors import (
    CellviError,
    InvalidDataError,
    MissingKeyError,
    NotSetUpError,
    RegistryMismatchError,
)
from cellvi.model import SCVI


def _adata(X, **obs):
    a = ad.AnnData(X, obs=pd.DataFrame(obs, index=[f"c{i}" for i in range(X.shape[0])]) if obs else None)
    a.var_names = [f"g{i}" for i in range(X.shape[1])]
    return a


def test_registry_records_categories_and_summary(small_adata):
    SCVI.setup_anndata(small_adata, batch_key="batch", labels_key="cell_type")
    reg = Registry.of(small_adata)
    assert reg.categories["batch"] == ["batch0", "batch1"]
    assert reg.summary["n_vars"] == small_adata.n_vars
    assert len(reg.summary["library_log_means"]) == 2
    assert Registry.from_json(reg.to_json()) == reg


@pytest.mark.parametrize(
    "values, message",
    [(-1.0, "negative"), (0.5, "non-integer"), (np.nan, "NaN"), (np.inf, "infinite")],
)
def test_bad_counts_are_rejected_and_adata_untouched(values, message):
    X = np.ones((5, 3), dtype=np.float32)
    X[2, 1] = values
    a = _adata(X)
    with pytest.raises(InvalidDataError, match=message):
        SCVI.setup_anndata(a)
    assert "_cellvi_registry" not in a.uns


def test_all_zero_and_empty_are_rejected():
    with pytest.raises(InvalidDataError, match="zero"):
        SCVI.setup_anndata(_adata(np.zeros((4, 3))))
    with pytest.raises(InvalidDataError, match="empty"):
        SCVI.setup_anndata(_adata(np.zeros((0, 3))))


def test_missing_keys_and_nan_covariates():
    X = np.ones((4, 3))
    a = _adata(X, batch=["a", "b", None, "a"])
    with pytest.raises(MissingKeyError, match="nope"):
        SCVI.setup_anndata(a, batch_key="nope")
    with pytest.raises(InvalidDataError, match="missing"):
        SCVI.setup_anndata(a, batch_key="batch")
    with pytest.raises(MissingKeyError, match="layer"):
        SCVI.setup_anndata(a, layer="counts")
    err = MissingKeyError("x")
    assert isinstance(err, KeyError) and isinstance(err, CellviError)


@pytest.mark.parametrize("fmt", ["dense_int", "dense_float", "csr", "csc"])
def test_storage_formats_give_the_same_registry(fmt):
    X = np.random.default_rng(0).poisson(2, size=(20, 5))
    conv = {
        "dense_int": lambda m: m.astype(np.int32),
        "dense_float": lambda m: m.astype(np.float64),
        "csr": sp.csr_matrix,
        "csc": sp.csc_matrix,
    }[fmt]
    a = _adata(conv(X))
    SCVI.setup_anndata(a)
    data = Registry.of(a).cell_data(a)
    assert data.X.shape == (20, 5)


def test_new_data_with_other_genes_or_categories_is_rejected(small_adata):
    SCVI.setup_anndata(small_adata, batch_key="batch")
    reg = Registry.of(small_adata)
    other = small_adata[:, ::-1].copy()
    with pytest.raises(RegistryMismatchError, match="order"):
        reg.cell_data(other)
    fewer = small_adata[:, :50].copy()
    with pytest.raises(RegistryMismatchError, match="missing"):
        reg.cell_data(fewer)
    new = small_adata.copy()
    new.obs["batch"] = new.obs["batch"].astype(str).replace("batch1", "batchX")
    with pytest.raises(RegistryMismatchError, match="batchX"):
        reg.cell_data(new)


def test_model_needs_setup(small_adata):
    with pytest.raises(NotSetUpError, match="setup_anndata"):
        SCVI(small_adata)


def test_duplicated_gene_names():
    a = _adata(np.ones((3, 3)))
    a.var_names = ["g", "g", "h"]
    with pytest.raises(InvalidDataError, match="var_names_make_unique"):
        SCVI.setup_anndata(a)


def test_category_columns_encode_alike_whatever_their_dtype():
    """Categorical, string, integer and mixed object columns with the same values as strings give the
    same categories and codes (a categorical column's codes come from its categories, with no string
    built per cell)."""
    from cellvi.data.registry import _categories_of, _encode

    values = [2, 10, 2, 1, 10, 10]
    columns = {
        "ints": values,
        "strings": [str(v) for v in values],
        "mixed": [v if i % 2 else str(v) for i, v in enumerate(values)],  # 2 and "2" are one category
        "categorical": pd.Categorical([str(v) for v in values], categories=["1", "10", "2", "unused"]),
    }
    obs = pd.DataFrame(columns)
    expected_codes = np.array([2, 1, 2, 0, 1, 1])
    for key in columns:
        assert _categories_of(obs, key) == ["1", "10", "2"], key
        np.testing.assert_array_equal(_encode(obs, key, ["1", "10", "2"], key), expected_codes)
    with pytest.raises(RegistryMismatchError, match="'2'"):
        _encode(obs, "mixed", ["1", "10"], "mixed")
