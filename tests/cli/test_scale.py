"""`cellvi run`'s large-input paths (cellvi.cli._scale) and its 10x .h5 reader."""

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scanpy import _utils as scanpy_utils

from cellvi.cli import _scale, main
from cellvi.cli._common import read_input
from cellvi.model import SCVI


def _write_10x_h5(path, X: sp.csr_matrix, cells, genes) -> None:
    """A Cell Ranger v3 filtered_feature_bc_matrix.h5: CSC of genes x cells under /matrix."""
    with h5py.File(path, "w") as f:
        m = f.create_group("matrix")
        m["data"] = X.data.astype(np.int32)
        m["indices"] = X.indices.astype(np.int64)
        m["indptr"] = X.indptr.astype(np.int64)
        m["shape"] = np.array([X.shape[1], X.shape[0]], dtype=np.int32)
        m["barcodes"] = np.array(cells, dtype="S")
        feats = m.create_group("features")
        feats["id"] = np.array([f"ENSG{i:05d}" for i in range(len(genes))], dtype="S")
        feats["name"] = np.array(genes, dtype="S")
        feats["feature_type"] = np.array(["Gene Expression"] * len(genes), dtype="S")
        feats["genome"] = np.array(["GRCh38"] * len(genes), dtype="S")
        feats["_all_tag_keys"] = np.array(["genome"], dtype="S")


def test_10x_h5_reads_and_registers(tmp_path):
    rng = np.random.default_rng(0)
    X = sp.csr_matrix(rng.poisson(0.8, (40, 15)).astype(np.float32))
    cells, genes = [f"AAAC-{i}" for i in range(40)], [f"G{i}" for i in range(15)]
    path = tmp_path / "filtered_feature_bc_matrix.h5"
    _write_10x_h5(path, X, cells, genes)
    adata = read_input(path)
    assert list(adata.obs_names) == cells and list(adata.var_names) == genes
    assert (sp.csr_matrix(adata.X) != X).nnz == 0
    SCVI.setup_anndata(adata)  # the counts pass the model's registry checks
    assert SCVI(adata, n_latent=2).module.n_input == 15


@pytest.mark.parametrize("directed", [False, True])
def test_lean_igraph_is_scanpys_graph(directed):
    A = sp.random(60, 60, density=0.1, format="csr", random_state=1, dtype=np.float32)
    A = (A + A.T).tocsr()
    A.data[::7] = 0  # explicit zeros are not edges, as in scanpy
    original = scanpy_utils.get_igraph_from_adjacency
    ours, theirs = (
        _scale.igraph_from_adjacency(A, directed=directed),
        scanpy_utils.get_igraph_from_adjacency(A, directed=directed),
    )
    assert ours.get_edgelist() == theirs.get_edgelist() and ours.is_directed() == theirs.is_directed()
    np.testing.assert_array_equal(ours.es["weight"], theirs.es["weight"])
    with _scale.lean_igraph():
        assert scanpy_utils.get_igraph_from_adjacency is not original
    assert scanpy_utils.get_igraph_from_adjacency is original


@pytest.mark.parametrize("pairs_once", [False, True])
def test_leiden_array_weights_give_the_attribute_weights_partition(pairs_once):
    """Weights held as one array (no Python list attribute) reach igraph's Leiden unchanged: the same
    partition, seed for seed, as with the same graph's weight attribute."""
    import scanpy as sc
    from sklearn.neighbors import kneighbors_graph

    rng = np.random.default_rng(0)
    centres = rng.normal(scale=4, size=(5, 6))
    x = centres[rng.integers(0, 5, 500)] + rng.normal(size=(500, 6))
    knn = kneighbors_graph(x, 10, mode="distance")
    knn.data = np.exp(-knn.data)  # distinct weights
    adjacency = (knn + knn.T).tocsr()  # symmetric, as scanpy's connectivities
    data = ad.AnnData(obs=pd.DataFrame(index=[f"c{i}" for i in range(500)]))
    for key, array_weights in (("attribute", False), ("array", True)):
        with _scale.lean_igraph(pairs_once=pairs_once, array_weights=array_weights):
            sc.tl.leiden(
                data,
                adjacency=adjacency,
                flavor="igraph",
                n_iterations=2,
                directed=False,
                random_state=3,
                key_added=key,
            )
    assert data.obs["attribute"].nunique() > 2
    np.testing.assert_array_equal(data.obs["attribute"].to_numpy(), data.obs["array"].to_numpy())
    g = _scale.igraph_from_adjacency(adjacency, pairs_once=pairs_once, array_weights=True)
    assert "weight" not in g.es.attributes() and g.weight_array.dtype == np.float64
    assert len(g.weight_array) == g.ecount()


def test_leiden_with_each_pair_once_is_as_good_as_scanpys(tiny_run):
    import scanpy as sc

    result = ad.read_h5ad(tiny_run / "result.h5ad")
    graph = scanpy_utils.get_igraph_from_adjacency(result.obsp["connectivities"])
    for resolution in (0.5, 1.0):
        sc.tl.leiden(result, resolution=resolution, flavor="igraph", n_iterations=2, key_added="plain")
        with _scale.lean_igraph(pairs_once=True):
            sc.tl.leiden(result, resolution=resolution, flavor="igraph", n_iterations=2, key_added="lean")
        q = [
            graph.modularity(result.obs[k].cat.codes.to_numpy(), weights="weight", resolution=resolution)
            for k in ("plain", "lean")
        ]
        assert abs(q[0] - q[1]) < 0.02, q  # the seed-to-seed spread here is ~0.01


def test_backed_run(tiny_input, tmp_path, monkeypatch):
    """Backed input, 150 of 200 genes: trained from a chunked backed copy (removed at the end);
    result.h5ad holds every gene, copied file to file."""
    monkeypatch.setenv("CELLVI_BACKED_BYTES", "0")
    out = tmp_path / "run"
    args = ["run", str(tiny_input), "-o", str(out), "--batch-key", "batch", "--labels-key", "cell_type"]
    args += ["--max-epochs", "1", "--n-top-genes", "150", "--no-progress", "--no-scib", "--de-cells", "50"]
    assert main(args) == 0
    result, original = ad.read_h5ad(out / "result.h5ad"), ad.read_h5ad(tiny_input)
    assert result.shape == original.shape and (sp.csr_matrix(result.X) != original.X).nnz == 0
    assert result.obsm["X_umap"].shape == (600, 2) and result.obs["leiden"].nunique() > 1
    assert result.var["highly_variable"].sum() == 150 and not (out / "training_counts.h5ad").exists()
    assert len(pd.read_csv(out / "markers.csv")) > 0


def test_knn_options_above_the_threshold_only(monkeypatch):
    """Up to LEAN_KNN_CELLS scanpy's default neighbour search; above, scanpy's pynndescent transformer
    with KNN_TREES trees and scanpy's other settings (15 neighbours, log2(cells) iterations, the seed)."""
    assert _scale.knn_options(_scale.LEAN_KNN_CELLS, 0) == {}
    trees = _scale.knn_options(1_000_000, 7)["transformer"]
    assert (trees.n_trees, trees.n_neighbors, trees.n_iters, trees.random_state) == (_scale.KNN_TREES, 15, 20, 7)
    assert trees.metric == "euclidean" and _scale.KNN_TREES < min(64, 5 + round(1_000_000**0.5 / 20))


def _y_shaped_cells(n_per_group: int, seed: int = 0):
    """Cells along a Y in 10-D, in six consecutive groups: root a-b, then branch 1 (c-d) and 2 (e-f)."""
    rng = np.random.default_rng(seed)
    fork, ends = np.zeros(10), (np.eye(10)[1] * 8, np.eye(10)[2] * 8)
    start = -np.eye(10)[0] * 8
    segments = {"a": (start, start / 2), "b": (start / 2, fork)}
    segments |= {"c": (fork, ends[0] / 2), "d": (ends[0] / 2, ends[0])}
    segments |= {"e": (fork, ends[1] / 2), "f": (ends[1] / 2, ends[1])}
    points, groups = [], []
    for name, (p, q) in segments.items():
        t = rng.uniform(size=(n_per_group, 1))
        points.append(p + t * (q - p) + rng.normal(scale=0.4, size=(n_per_group, 10)))
        groups += [name] * n_per_group
    a = ad.AnnData(obs=pd.DataFrame({"leiden": pd.Categorical(groups)}))
    a.obsm["X_scvi"] = np.concatenate(points).astype(np.float32)
    return a


def test_paga_on_a_cell_sample_estimates_scanpys_connectivities():
    import scanpy as sc

    a = _y_shaped_cells(1000)
    sc.pp.neighbors(a, use_rep="X_scvi", transformer="sklearn")
    full = a.copy()
    assert _scale.paga(full, seed=0) == full.n_obs  # below the threshold: scanpy's PAGA as is
    used = _scale.paga(a, seed=0, max_cells=2000)
    assert used == 2000 and a.uns["paga"]["subsample_cells"] == 2000
    assert list(a.uns["leiden_sizes"]) == [1000] * 6  # sizes of all cells, not of the sample
    conn, full_conn = (x.uns["paga"]["connectivities"].toarray() for x in (a, full))
    assert np.abs(conn - full_conn).max() < 0.15  # an estimate of the full graph's connectivities
    tree = a.uns["paga"]["connectivities_tree"].toarray() > 0
    names = list(a.obs["leiden"].cat.categories)
    edges = {tuple(sorted((names[i], names[j]))) for i, j in zip(*np.nonzero(tree | tree.T))}
    assert {("a", "b"), ("c", "d"), ("e", "f")} <= edges  # (b, c and e all meet at the fork)
