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
