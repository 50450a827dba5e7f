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


def test_kmeans_starts_rescore_nmi_ari_and_the_totals_as_the_benchmarker_would(embedded):
    from scib_metrics.utils import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    from cellvi.analysis.integration import _rescore_kmeans

    keys = ["good", "noise"]
    one = benchmark_integration(embedded, keys, "batch", "cell_type", neighbors="exact")
    # recomputing with one start gives back the Benchmarker's own k-means scores, bio and total
    again = one.copy()
    again.attrs = one.attrs
    labels = embedded.obs["cell_type"].astype(str).to_numpy()
    _rescore_kmeans(again, {k: embedded.obsm[k] for k in keys}, labels, 1)
    np.testing.assert_allclose(again.to_numpy(), one.to_numpy(), atol=1e-6)
    five = benchmark_integration(embedded, keys, "batch", "cell_type", neighbors="exact", kmeans_n_init=5)
    kmeans = ["KMeans NMI", "KMeans ARI"]
    rest = [c for c in one.columns if c not in kmeans + ["Bio conservation", "Total"]]
    np.testing.assert_allclose(five[rest].to_numpy(), one[rest].to_numpy())
    pred = KMeans(3, n_init=5).fit(np.asarray(embedded.obsm["noise"], np.float32)).labels_
    assert five.loc["noise", "KMeans NMI"] == pytest.approx(normalized_mutual_info_score(labels, pred))
    np.testing.assert_allclose(five["Total"], 0.6 * five["Bio conservation"] + 0.4 * five["Batch correction"])
    with pytest.raises(CellviError, match="kmeans_n_init"):
        benchmark_integration(embedded, keys, "batch", "cell_type", kmeans_n_init=0)
    with pytest.raises(CellviError, match="return_benchmarker"):
        benchmark_integration(embedded, keys, "batch", "cell_type", kmeans_n_init=3, return_benchmarker=True)
