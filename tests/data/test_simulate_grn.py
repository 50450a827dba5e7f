"""cellvi.data.simulate_grn: counts from a known network along a branching trajectory."""

import numpy as np
import pytest

import cellvi
from cellvi.errors import CellviError


def test_counts_network_and_drivers():
    a = cellvi.data.simulate_grn(n_cells=300, n_genes=60, n_tfs=8, n_batches=2, seed=3)
    b = cellvi.data.simulate_grn(n_cells=300, n_genes=60, n_tfs=8, n_batches=2, seed=3)
    assert (a.X != b.X).nnz == 0  # same arguments, same data
    X = a.X.toarray()
    assert X.min() >= 0 and np.array_equal(X, np.round(X)) and a.obs["batch"].nunique() == 2
    net = a.uns["true_network"]
    orphan = a.uns["no_target_tf"]
    assert orphan not in set(net["regulator"]) and orphan not in set(net["target"])
    assert set(net["regulator"]) <= set(a.var_names[a.var["is_tf"]])
    # the branch drivers are on only in their branch
    act = a.layers["activity"]
    for br, tf in (("branch1", "TF1"), ("branch2", "TF2")):
        on = (a.obs["branch"] == br).to_numpy()
        j = list(a.var_names).index(tf)
        assert act[on, j].mean() > 5 * act[~on, j].mean()
    with pytest.raises(CellviError):
        cellvi.data.simulate_grn(n_genes=5, n_tfs=8)


def test_hill_kinetics_is_switch_like_and_checked():
    lin = cellvi.data.simulate_grn(n_cells=1000, n_genes=40, n_tfs=8, seed=1)
    hill = cellvi.data.simulate_grn(n_cells=1000, n_genes=40, n_tfs=8, seed=1, kinetics="hill")
    # the same network and drivers; only how targets respond to their regulators differs
    assert lin.uns["true_network"].equals(hill.uns["true_network"])
    np.testing.assert_array_equal(lin.layers["activity"][:, :3], hill.layers["activity"][:, :3])
    assert not np.allclose(lin.layers["activity"], hill.layers["activity"])
    # a target of TF1 alone, where TF1 is at about half the threshold: linear kinetics pass on ~a quarter
    # of the full response (plus the floor), Hill kinetics (0.2 / 0.5)^4 ~ 3% of it
    net = hill.uns["true_network"]
    only = [t for t, d in net.groupby("target") if list(d["regulator"]) == ["TF1"] and d["weight"].iloc[0] > 0]
    assert only, "seed 1 should give a target activated by TF1 alone"
    names = list(hill.var_names)
    tf1 = hill.layers["activity"][:, names.index("TF1")]
    band = (tf1 > 0.15) & (tf1 < 0.3)
    for kind, a in (("linear", lin), ("hill", hill)):
        g = a.layers["activity"][:, names.index(only[0])]
        ratio = g[band].mean() / g[tf1 > 1.0].mean()
        assert (ratio < 0.14) if kind == "hill" else (ratio > 0.16), (kind, ratio)
    with pytest.raises(CellviError, match="kinetics"):
        cellvi.data.simulate_grn(n_genes=20, n_tfs=8, kinetics="sigmoid")
