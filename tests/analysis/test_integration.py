"""cellvi.analysis.benchmark_integration: the scIB table, its checks, and its error without scib-metrics."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from cellvi.analysis import benchmark_integration
from cellvi.errors import CellviError, InvalidDataError, MissingDependencyError, MissingKeyError


@pytest.fixture
def embedded(small_adata):
    rng = np.random.default_rng(0)
    a = small_adata
    codes = a.obs["cell_type"].cat.codes.to_numpy()
    a.obsm["good"] = np.eye(3)[codes] * 3 + rng.normal(size=(a.n_obs, 3))  # separates labels, mixes batches
    a.obsm["noise"] = rng.normal(size=(a.n_obs, 5))
    return a


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(obsm_keys=["missing"]), MissingKeyError),
        (dict(batch_key="nope"), MissingKeyError),
        (dict(label_key="nope"), MissingKeyError),
        (dict(batch_key="cell_type", label_key="one"), InvalidDataError),
    ],
)
def test_bad_keys_raise_clear_errors_and_leave_adata_alone(embedded, kwargs, error):
    embedded.obs["one"] = "x"
    before = (set(embedded.obsm), list(embedded.obs.columns), set(embedded.uns))
    args = dict(obsm_keys=["good"], batch_key="batch", label_key="cell_type") | kwargs
    with pytest.raises(error) as info:
        benchmark_integration(embedded, **args)
    assert isinstance(info.value, CellviError)
    assert (set(embedded.obsm), list(embedded.obs.columns), set(embedded.uns)) == before


def test_missing_extra_names_the_install_command(embedded, monkeypatch):
    monkeypatch.setitem(sys.modules, "scib_metrics", None)
    monkeypatch.setitem(sys.modules, "scib_metrics.benchmark", None)
    with pytest.raises(MissingDependencyError, match=r"cellvi\[integration\]"):
        benchmark_integration(embedded, ["good"], "batch", "cell_type")


def test_table_shape_columns_and_ordering(embedded):
    pytest.importorskip("scib_metrics")
    before = (set(embedded.obsm), set(embedded.uns), embedded.X.copy())
    df = benchmark_integration(embedded, ["good", "noise"], "batch", "cell_type", neighbors="exact")
    assert list(df.index) == ["good", "noise"]
    bio = ["Isolated labels", "KMeans NMI", "KMeans ARI", "Silhouette label", "cLISI"]
    batch = ["BRAS", "iLISI", "KBET", "Graph connectivity", "PCR comparison"]
    assert list(df.columns) == bio + batch + ["Batch correction", "Bio conservation", "Total"]
    assert df.dtypes.eq(np.float64).all() and np.isfinite(df.to_numpy()).all()
    np.testing.assert_allclose(df["Bio conservation"], df[bio].mean(1))
    np.testing.assert_allclose(df["Total"], 0.6 * df["Bio conservation"] + 0.4 * df["Batch correction"])
    assert df.loc["good", "Bio conservation"] > df.loc["noise", "Bio conservation"] + 0.2
    assert set(embedded.obsm) == before[0] and set(embedded.uns) == before[1]
    assert (embedded.X != before[2]).nnz == 0
