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
