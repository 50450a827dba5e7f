"""`cellvi run --nproc 2`: torchrun starts 2 processes (gloo, CPU) that train data-parallel; rank 0 alone
runs the rest of the pipeline and writes the outputs; a user error is one stderr line, as on one process."""

import hashlib
import json

import anndata as ad
import numpy as np
import pytest
import torch

import cellvi
from cellvi.cli import main

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built")
OPTIONS = ["--batch-key", "batch", "--labels-key", "cell_type", "--n-top-genes", "0", "--no-scib", "--no-progress"]


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_run_with_two_processes_writes_every_output_and_the_model_loads_in_one_process(tiny_input, tmp_path, capfd):
    out = tmp_path / "run"
    argv = ["run", str(tiny_input), "-o", str(out), *OPTIONS, "--max-epochs", "3", "--de-cells", "50", "--nproc", "2"]
    assert main(argv) == 0
    stdout = capfd.readouterr().out
    assert stdout.count("Report:") == 1  # rank 0 alone reports
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no staged folder of either rank left
    assert {"result.h5ad", "model", "markers.csv", "report.html", "summary.json"} <= {p.name for p in out.iterdir()}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["params"]["nproc"] == 2 and summary["epochs"] == 3
    result = ad.read_h5ad(out / "result.h5ad")
    assert result.obs["leiden"].nunique() >= 2 and result.obsm["X_umap"].shape == (600, 2)
    model = cellvi.model.SCVI.load(out / "model", result)  # in this one process
    assert model.history.index.tolist() == [0, 1, 2]
    # the latent the 2 ranks computed together (each half of the cells) is the one-process latent, in order
    np.testing.assert_allclose(result.obsm["X_scvi"], model.get_latent_representation(), rtol=1e-5, atol=1e-5)


def test_a_user_error_in_the_processes_is_one_line_and_changes_nothing(tiny_input, tmp_path, capfd):
    out = tmp_path / "run"
    before = _digest(tiny_input)
    argv = ["run", str(tiny_input), "-o", str(out), "--batch-key", "donor", "--nproc", "2", "--no-progress"]
    assert main(argv) == 2
    err = capfd.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("cellvi: error: --batch-key 'donor' is not a column"), err
    assert not out.exists() and sorted(tmp_path.iterdir()) == [] and _digest(tiny_input) == before
    # checked before any process starts
    out.mkdir()
    assert main(["run", str(tiny_input), "-o", str(out), "--nproc", "2"]) == 2
    assert "already exists" in capfd.readouterr().err
    assert main(["demo", "-o", str(tmp_path / "demo"), "--nproc", "0"]) == 2
    assert capfd.readouterr().err.strip() == "cellvi: error: --nproc must be >= 1, got 0"
