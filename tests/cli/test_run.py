import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from cellvi.cli import main
from cellvi.model._files import read_meta


def test_run_writes_every_output(tiny_run, tiny_input):
    res = ad.read_h5ad(tiny_run / "result.h5ad")
    src = ad.read_h5ad(tiny_input)
    assert res.shape == src.shape and list(res.var_names) == list(src.var_names)  # every gene kept
    assert res.var["highly_variable"].sum() == 150
    assert res.obsm["X_scvi"].shape == (600, 10) and res.obsm["X_umap"].shape == (600, 2)
    assert res.obs["leiden"].nunique() >= 2 and res.obs["dpt_pseudotime"].notna().all()
    assert "paga" in res.uns and "connectivities" in res.uns["paga"]
    assert (res.X != src.X).nnz == 0  # counts untouched
    markers = pd.read_csv(tiny_run / "markers.csv")
    assert list(markers.columns[:3]) == ["cluster", "rank", "gene"]
    assert set(markers["cluster"].astype(str)) <= set(res.obs["leiden"].astype(str))
    assert (markers["lfc_mean"] > 0).all() and markers.groupby("cluster")["rank"].max().max() <= 10
    assert (tiny_run / "model" / "model.json").is_file()
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert summary["epochs"] == 4 and summary["genes_trained"] == 150
    assert [s["step"] for s in summary["steps"]][:2] == ["read input", "highly variable genes"]
    html = (tiny_run / "report.html").read_text()
    for title in (
        "UMAP",
        "Training curves",
        "Batch mixing",
        "Cluster sizes by batch",
        "PAGA graph",
        "Marker genes",
        "Run summary",
    ):
        assert title in html
    assert "http://" not in html and "https://" not in html  # nothing fetched from the network


def test_tools_use_the_saved_model(tiny_run, tiny_input, tmp_path, capsys):
    emb = tmp_path / "emb.h5ad"
    assert main(["embed", str(tiny_run), str(tiny_input), "-o", str(emb)]) == 0
    assert ad.read_h5ad(emb).obsm["X_scvi"].shape == (600, 10)
    de = tmp_path / "de.csv"
    assert (
        main(
            [
                "de",
                str(tiny_run / "model"),
                str(tiny_input),
                "--groupby",
                "cell_type",
                "--group1",
                "root",
                "--group2",
                "branch1_late",
                "--n-samples",
                "50",
                "-o",
                str(de),
            ]
        )
        == 0
    )
    table = pd.read_csv(de)
    assert len(table) == 150 and {"gene", "proba_de", "lfc_mean"} <= set(table.columns)
    q = ad.read_h5ad(tiny_input)[:100].copy()
    del q.obs["cell_type"]  # an unannotated query
    q.obs["batch"] = "query"
    qpath = tmp_path / "q.h5ad"
    q.write_h5ad(qpath)
    assert (
        main(["map-query", str(tiny_run), str(qpath), "-o", str(tmp_path / "q"), "--max-epochs", "2", "--no-progress"])
        == 0
    )
    mapped = ad.read_h5ad(tmp_path / "q" / "result.h5ad")
    assert mapped.obsm["X_scvi"].shape == (100, 10)
    classes = {"root", "branch1_early", "branch1_late", "branch2_early", "branch2_late"}
    assert set(mapped.obs["predicted_labels"]) <= classes
    # the reference was calibrated by `cellvi run --scanvi`: calibrated confidence and unknown cells
    extras = read_meta(tiny_run / "model")["extras"]
    assert 0 < extras["temperature"] != 1.0
    conf = mapped.obs["prediction_confidence"].to_numpy()
    assert ((conf >= 1 / len(classes)) & (conf <= 1)).all()
    threshold = extras["unknown_detector"]["thresholds"][extras["unknown_detector"]["method"]]
    np.testing.assert_array_equal(
        mapped.obs["is_unknown"].to_numpy(), mapped.obs["unknown_score"].to_numpy() > threshold
    )
    expected = np.where(mapped.obs["is_unknown"], "unknown", mapped.obs["predicted_labels"])
    np.testing.assert_array_equal(mapped.obs["predicted_labels_or_unknown"].to_numpy(), expected)
    report = (tmp_path / "q" / "report.html").read_text()
    assert "Predicted labels" in report and "marked unknown" in report and "UMAP of the query" in report
    assert report.count("data:image/png;base64,") == 1
    capsys.readouterr()
    assert main(["info", str(tiny_run), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model"] == "SCANVI" and info["genes"] == 150 and info["batches"] == ["batch0", "batch1"]


def test_help_shows_examples(capsys):

    for cmd in ([], ["run"], ["demo"], ["embed"], ["de"], ["map-query"], ["info"]):
        with pytest.raises(SystemExit):
            main([*cmd, "--help"])
        assert "example" in capsys.readouterr().out


def test_scanpy_neighbours_work_on_a_large_latent():
    """Above ~4,000 cells scanpy switches to pynndescent; the pinned versions must work together."""
    import numpy as np
    import scanpy as sc

    adata = ad.AnnData(np.zeros((5000, 1), dtype=np.float32))
    adata.obsm["X_scvi"] = np.random.default_rng(0).normal(size=(5000, 10)).astype(np.float32)
    sc.pp.neighbors(adata, use_rep="X_scvi")
    assert adata.obsp["connectivities"].shape == (5000, 5000)


def test_linear_run_shows_the_gene_programmes(tiny_input, tmp_path):
    """`cellvi run --linear` trains LinearSCVI and its report has a loadings section with a picture."""
    import anndata

    from cellvi.cli import main

    out = tmp_path / "linear"
    args = ["run", str(tiny_input), "-o", str(out), "--batch-key", "batch", "--linear", "--max-epochs", "2"]
    assert main(args + ["--n-top-genes", "150", "--no-progress", "--no-scib", "--de-cells", "50"]) == 0
    page = (out / "report.html").read_text()
    section = page.split("<h2>Gene programmes (LinearSCVI loadings)", 1)[1].split("<h2", 1)[0]
    assert "<img" in section
    assert anndata.read_h5ad(out / "result.h5ad").obsm["X_scvi"].shape == (600, 10)
    assert '"model_class": "LinearSCVI"' in (out / "model" / "model.json").read_text()


def test_root_group_starts_at_the_far_end_of_the_group():
    """--root-group: the root cell is the group's far end, not its end at the branch point (a Y shape)."""
    import numpy as np
    import scanpy as sc
    from anndata import AnnData

    from cellvi.cli._run_steps import farthest_member as _farthest_member

    rng = np.random.default_rng(0)
    t = rng.uniform(0, 1, 3000)
    side = rng.choice([-1.0, 1.0], 3000)
    x = np.where(t < 0.3, t, 0.3 + (t - 0.3) * 0.7)
    y = np.where(t < 0.3, 0.0, side * (t - 0.3) * 2)
    pts = np.c_[x, y] + rng.normal(0, 0.01, (3000, 2))
    a = AnnData(obsm={"X_pos": pts.astype(np.float32)})
    sc.pp.neighbors(a, use_rep="X_pos", n_neighbors=15, random_state=0)
    sc.tl.diffmap(a)
    members = np.flatnonzero(t < 0.3)
    root = _farthest_member(a.obsm["X_diffmap"], a.uns["diffmap_evals"], members)
    assert t[root] < 0.03, t[root]


def test_doublets_are_scored_batch_by_batch(tmp_path, monkeypatch, capsys):
    """`cellvi run --doublets`: SOLO per batch; cells made doublets by hand score higher; report section."""
    import scipy.sparse as sp

    from cellvi.data import simulate_trajectory

    a = simulate_trajectory(n_cells=800, n_genes=200, n_batches=2, seed=1)
    rng = np.random.default_rng(0)
    X = sp.csr_matrix(a.X).toarray()
    batch, branch = a.obs["batch"].astype(str).to_numpy(), a.obs["cell_type"].astype(str).to_numpy()
    truth = np.zeros(a.n_obs, bool)
    truth[rng.choice(a.n_obs, 60, replace=False)] = True
    for i in np.flatnonzero(truth):  # the sum with a cell of the same batch and another cell type
        X[i] += X[rng.choice(np.flatnonzero((batch == batch[i]) & (branch != branch[i])))]
    a.X = sp.csr_matrix(X)
    a.write_h5ad(tmp_path / "in.h5ad")
    out = tmp_path / "run"
    args = ["run", str(tmp_path / "in.h5ad"), "-o", str(out), "--batch-key", "batch", "--doublets"]
    assert (
        main(args + ["--max-epochs", "40", "--n-top-genes", "0", "--no-progress", "--no-scib", "--de-cells", "50"]) == 0
    )
    res = ad.read_h5ad(out / "result.h5ad")
    score = res.obs["doublet_score"].to_numpy()
    assert np.all((score >= 0) & (score <= 1)) and res.obs["predicted_doublet"].dtype == bool
    assert score[truth].mean() > score[~truth].mean() + 0.2
    page = (out / "report.html").read_text()
    section = page.split("<h2>Doublets (SOLO)", 1)[1].split("<h2", 1)[0]
    assert "<img" in section and "batch0" in section and "batch1" in section
    assert json.loads((out / "summary.json").read_text())["params"]["doublets"] is True
    for extra, env, match in ((["--nproc", "2"], None, "one process"), ([], "0", "needs the data in memory")):
        if env is not None:
            monkeypatch.setenv("CELLVI_BACKED_BYTES", env)
        refused = [*args[:3], str(tmp_path / "refused"), *args[4:], *extra, "--no-progress"]
        assert main(refused) == 2 and match in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()
