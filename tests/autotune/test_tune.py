"""cellvi.autotune: search space checks, failed (diverging) trials, multi-objective Pareto front, and a
study shared by two worker processes through a real PostgreSQL server (via the command line)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import cellvi
from cellvi.autotune import DEFAULT_SPACE, check_space, storage_of, tune
from cellvi.errors import InvalidParameterError
from cellvi.model import SCVI

pytest.importorskip("optuna")

TINY = {"n_hidden": 16, "n_latent": {"type": "int", "low": 2, "high": 6}}


def test_space_errors_are_clear():
    assert set(check_space(DEFAULT_SPACE, SCVI)) == set(DEFAULT_SPACE)
    with pytest.raises(InvalidParameterError, match="empty"):
        check_space({}, SCVI)
    with pytest.raises(InvalidParameterError, match="Unknown parameters.*n_latnet"):
        check_space({"n_latnet": [5, 10]}, SCVI)
    with pytest.raises(InvalidParameterError, match="low must not exceed high"):
        check_space({"lr": {"type": "float", "low": 1e-2, "high": 1e-4}}, SCVI)
    with pytest.raises(InvalidParameterError, match="needs batch_key and label_key"):
        tune(cellvi.data.simulate(n_cells=50, n_genes=20, seed=0), TINY, objective="scib")


def test_diverging_trial_is_failed_and_search_goes_on(small_adata, tmp_path):
    space = {**TINY, "lr": [1e-3, 1e9]}  # lr 1e9 sends the loss to inf/NaN in the first epoch
    result = tune(
        small_adata, space, n_trials=4, max_epochs=2, batch_key="batch", pruner=None, output_dir=tmp_path, seed=1
    )
    states = result.trials.set_index("params_lr")["state"]
    assert set(states[states.index == 1e9]) == {"FAIL"} and set(states[states.index == 1e-3]) == {"COMPLETE"}
    assert result.best_params["lr"] == 1e-3 and result.model.is_trained
    for name in ("best_config.json", "trials.csv", "objective_vs_params.png", "best_model"):
        assert (tmp_path / name).exists()
    assert json.loads((tmp_path / "best_config.json").read_text())["trial_states"]["FAIL"] >= 1


def test_both_objectives_give_a_pareto_front(small_adata, monkeypatch):
    """The scIB side is cellvi.analysis.benchmark_integration's "Total"; stood in for here by kNN label
    accuracy (scib-metrics' own test lives with benchmark_integration)."""
    from cellvi import analysis
    from cellvi.analysis import knn_label_accuracy

    def fake_benchmark(adata, keys, batch_key, label_key, **kwargs):
        return pd.DataFrame({"Total": [knn_label_accuracy(adata.obsm[keys[0]], adata.obs[label_key])]}, index=keys)

    monkeypatch.setattr(analysis, "benchmark_integration", fake_benchmark, raising=False)
    result = tune(
        small_adata,
        TINY,
        objective="both",
        n_trials=3,
        max_epochs=2,
        batch_key="batch",
        label_key="cell_type",
        train_best=False,
    )
    assert {"elbo_validation", "scib_total"} <= set(result.trials.columns)
    assert len(result.pareto) >= 1 and set(result.best_values) == {"elbo_validation", "scib_total"}
    assert result.best_values["scib_total"] == result.pareto["scib_total"].max()


def test_cli_two_workers_share_a_postgres_study(small_adata, tmp_path, postgres_url):
    import optuna

    from cellvi.cli import main

    path = tmp_path / "in.h5ad"
    small_adata.write_h5ad(path)
    (tmp_path / "space.json").write_text(json.dumps(TINY))
    code = main(
        [
            "tune",
            str(path),
            "-o",
            str(tmp_path / "out"),
            "--n-trials",
            "4",
            "--n-jobs",
            "2",
            "--storage",
            postgres_url,
            "--max-epochs",
            "2",
            "--batch-key",
            "batch",
            "--space",
            str(tmp_path / "space.json"),
        ]
    )
    assert code == 0
    study = optuna.load_study(study_name="cellvi-tune", storage=storage_of(postgres_url))
    done = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(study.trials) == 4 and len(done) == 4
    assert len({t.user_attrs["pid"] for t in study.trials}) == 2  # both worker processes ran trials
    assert (tmp_path / "out" / "best_model" / "model.safetensors").exists()


def test_cli_help_shows_examples(capsys):
    from cellvi.cli import main

    with pytest.raises(SystemExit):
        main(["tune", "--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "cellvi tune data.h5ad -o tuning" in out and "--objective both" in out
