"""One tiny `cellvi run` shared by the CLI tests (simulated branching data, few epochs, SCANVI too)."""

import pytest

from cellvi.cli import main
from cellvi.data import simulate_trajectory


@pytest.fixture(scope="session")
def tiny_input(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli_in") / "tiny.h5ad"
    simulate_trajectory(n_cells=600, n_genes=200, n_batches=2, seed=0).write_h5ad(path)
    return path


@pytest.fixture(scope="session")
def tiny_run(tiny_input, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli_out") / "run"
    code = main(
        [
            "run",
            str(tiny_input),
            "-o",
            str(out),
            "--batch-key",
            "batch",
            "--labels-key",
            "cell_type",
            "--max-epochs",
            "4",
            "--n-top-genes",
            "150",
            "--root-group",
            "root",
            "--scanvi",
            "--no-progress",
            "--no-scib",
            "--de-cells",
            "100",
        ]
    )
    assert code == 0
    return out
