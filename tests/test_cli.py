import json

from cellvi.cli import main


def test_demo_writes_latent_umap_and_model(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--n-cells", "600", "--max-epochs", "2", "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cells"] == 600 and summary["epochs"] == 2
    for name in ("adata_scvi.h5ad", "umap.png", "model/model.safetensors"):
        assert (out / name).is_file()


def test_demo_reports_a_missing_file(tmp_path):
    import pytest

    with pytest.raises(SystemExit, match="no such file"):
        main(["demo", "--data", str(tmp_path / "nope.h5ad"), "--out", str(tmp_path / "o")])


def test_scanpy_neighbours_work_on_a_large_latent():
    """Above ~4,000 cells scanpy switches to pynndescent; the pinned versions must work together."""
    import anndata as ad
    import numpy as np
    import scanpy as sc

    adata = ad.AnnData(np.zeros((5000, 1), dtype=np.float32))
    adata.obsm["X_scvi"] = np.random.default_rng(0).normal(size=(5000, 10)).astype(np.float32)
    sc.pp.neighbors(adata, use_rep="X_scvi")
    assert adata.obsp["connectivities"].shape == (5000, 5000)
