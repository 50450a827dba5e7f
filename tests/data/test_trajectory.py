"""The branching-trajectory simulator, and trajectory inference on the cellvi latent checked against it."""

import numpy as np
import pytest
import scipy.stats as ss

import cellvi
from cellvi.data import simulate_trajectory
from cellvi.data.trajectory import STAGES, TRUE_TREE


def test_stages_follow_time_and_branch(tmp_path):
    a = simulate_trajectory(n_cells=3000, n_genes=50, n_batches=2, seed=3)
    t, br, ct = a.obs["time"].to_numpy(), a.obs["branch"].astype(str).to_numpy(), a.obs["cell_type"].astype(str)
    assert list(a.obs["cell_type"].cat.categories) == list(STAGES)
    assert np.all((br == "root") == (t < 0.3)) and np.all((ct == "root") == (br == "root"))
    assert np.all(ct.str.startswith("branch1").to_numpy() == (br == "branch1"))
    assert np.all(ct.str.endswith("_late").to_numpy() == (t >= 0.65))
    X = a.X
    assert X.dtype == np.float32 and np.all(X.data == np.round(X.data)) and X.data.min() > 0
    on_disk = cellvi.data.simulate_trajectory(
        n_cells=3000, n_genes=50, n_batches=2, seed=3, path=str(tmp_path / "t.h5ad"), chunk_size=1000
    )
    import anndata as ad

    assert (ad.read_h5ad(on_disk).X != X).nnz == 0  # same data in chunks
    # dynamic genes: the two branch ends differ; static genes do not move
    dyn = a.var["is_dynamic"].to_numpy()
    assert np.all(a.var.loc[~dyn, "traj_lfc_end_branch1"] == 0) and np.any(a.var.loc[dyn, "traj_lfc_end_branch1"] != 0)


def _trajectory_scores(a, rep: str) -> tuple[float, dict]:
    import scanpy as sc

    sc.pp.neighbors(a, use_rep=rep, n_neighbors=15, random_state=0)
    sc.tl.diffmap(a)
    a.uns["iroot"] = int(np.argmin(a.obs["time"].to_numpy()))  # the earliest cell
    sc.tl.dpt(a)
    rho = ss.spearmanr(a.obs["dpt_pseudotime"], a.obs["time"]).correlation
    sc.tl.paga(a, groups="cell_type")
    C = a.uns["paga"]["connectivities"].toarray()
    cats = list(a.obs["cell_type"].cat.categories)
    conn = {frozenset((cats[i], cats[j])): C[i, j] for i in range(len(cats)) for j in range(i)}
    return float(rho), conn


def _tree_respected(conn: dict) -> bool:
    """PAGA connects the stages in the true branching order: every edge of the true tree (root to both
    branch starts, each start to its late stage) is stronger than every pair that the tree does not join
    except the two branch starts (which meet at the branch point). So the root does not touch a late stage
    and nothing of one branch touches the other beyond their starts."""
    tree = {frozenset(e) for e in TRUE_TREE}
    siblings = frozenset(("branch1_early", "branch2_early"))
    weakest_true = min(conn[e] for e in tree)
    strongest_false = max(v for e, v in conn.items() if e not in tree and e != siblings)
    return weakest_true > strongest_false and weakest_true > 0


def test_dpt_and_paga_on_the_latent_recover_the_true_trajectory():
    import scanpy as sc

    a = simulate_trajectory(n_cells=1500, n_genes=400, n_batches=2, seed=1)
    cellvi.model.SCVI.setup_anndata(a, batch_key="batch")
    model = cellvi.model.SCVI(a)
    model.train(max_epochs=50, plan_kwargs={"lr": 4e-3, "n_epochs_kl_warmup": 16})
    model.get_latent_representation(a)
    rho, conn = _trajectory_scores(a, "X_scvi")
    base = a.copy()  # the baseline: PCA of log-normalised counts
    sc.pp.normalize_total(base, target_sum=1e4)
    sc.pp.log1p(base)
    sc.pp.pca(base, n_comps=10, random_state=0)
    a.obsm["X_pca"] = base.obsm["X_pca"]
    rho_pca, conn_pca = _trajectory_scores(a, "X_pca")
    print(
        f"\ndpt Spearman vs true time: cellvi latent {rho:.3f}, PCA baseline {rho_pca:.3f}; "
        f"PAGA tree respected: cellvi {_tree_respected(conn)}, PCA {_tree_respected(conn_pca)}"
    )
    print({"-".join(sorted(k)): round(v, 3) for k, v in conn.items()})
    assert rho >= 0.8
    assert _tree_respected(conn)


@pytest.mark.parametrize("bad", [{"branch_point": 1.0}, {"n_cells": 0}, {"dynamic_fraction": 2.0}])
def test_bad_arguments_are_refused(bad):
    with pytest.raises(ValueError):
        simulate_trajectory(**{"n_cells": 10, "n_genes": 5, **bad})
