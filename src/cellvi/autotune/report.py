"""The result of a search: best configuration, trials table, Pareto front, plots, the trained model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import TrainingDivergedError
from . import space as S


def trials_table(study, objective_names) -> pd.DataFrame:
    """One row per trial: number, state, the objective values, params_*, user_attrs_*, duration_s."""
    df = study.trials_dataframe(
        attrs=(
            "number",
            "state",
            "value" if len(objective_names) == 1 else "values",
            "params",
            "user_attrs",
            "duration",
        )
    )
    renames = (
        {"value": objective_names[0]}
        if len(objective_names) == 1
        else {f"values_{i}": name for i, name in enumerate(objective_names)}
    )
    df = df.rename(columns=renames)
    if "duration" in df:
        df["duration_s"] = df.pop("duration").dt.total_seconds()
    return df


def plot_objective_vs_params(trials: pd.DataFrame, params, objective_names):
    """A Figure: for each objective (rows) and parameter (columns), the completed trials' values."""
    from matplotlib.figure import Figure

    done = trials[trials["state"] == "COMPLETE"]
    params = list(params)
    fig = Figure(figsize=(2.6 * max(1, len(params)), 2.4 * len(objective_names)), layout="constrained")
    axes = fig.subplots(len(objective_names), max(1, len(params)), squeeze=False)
    for r, obj in enumerate(objective_names):
        for c, name in enumerate(params):
            ax = axes[r, c]
            x = done[f"params_{name}"]
            if x.dtype == object or x.dtype == bool:
                cats = sorted(x.astype(str).unique())
                ax.scatter([cats.index(v) for v in x.astype(str)], done[obj], s=12)
                ax.set_xticks(range(len(cats)), cats, fontsize=7, rotation=30)
            else:
                ax.scatter(x, done[obj], s=12)
            ax.set_xlabel(name, fontsize=8)
            if c == 0:
                ax.set_ylabel(obj, fontsize=8)
            ax.tick_params(labelsize=7)
    fig.suptitle("Objective against each searched parameter (completed trials)")
    return fig


def param_importances(study, objective_names) -> pd.DataFrame:
    """Optuna's parameter importances (fANOVA) per objective; empty where Optuna cannot compute them
    (fewer than two completed trials, or no parameter that varied)."""
    import optuna

    cols = {}
    for i, name in enumerate(objective_names):
        # one objective: Optuna follows the study's direction; with a target it assumes lower is better,
        # and every objective here is maximised
        target = None if len(objective_names) == 1 else (lambda t, i=i: -t.values[i])
        try:
            cols[name] = optuna.importance.get_param_importances(study, target=target)
        except (RuntimeError, ValueError):
            cols[name] = {}
    return pd.DataFrame(cols)


def plot_importances(importances: pd.DataFrame):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.2 * max(1, importances.shape[1]), 0.3 * max(3, len(importances)) + 1), layout="constrained")
    axes = fig.subplots(1, max(1, importances.shape[1]), squeeze=False)[0]
    for ax, name in zip(axes, importances.columns):
        col = importances[name].dropna().sort_values()
        ax.barh(col.index.astype(str), col.to_numpy())
        ax.set_title(f"importance for {name}", fontsize=9)
        ax.tick_params(labelsize=7)
    return fig


def summarize(ctx: dict, adata, outdir: Path | None, search_s: float, train_best: bool):
    import optuna

    import cellvi

    from .tuner import TuneResult, _model_class, storage_of

    study = optuna.load_study(study_name=ctx["study_name"], storage=storage_of(ctx["storage"]))
    names = {"elbo": ["elbo_validation"], "scib": ["scib_total"], "both": ["elbo_validation", "scib_total"]}
    names = names[ctx["objective"]]
    trials = trials_table(study, names)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise TrainingDivergedError(
            f"No trial of the study completed ({len(study.trials)} trials; see their states). Narrow the "
            "search space (e.g. a lower learning rate range) or check the data."
        )
    pareto = None
    if len(names) == 1:
        best = study.best_trial
    else:
        front = study.best_trials
        pareto = trials[trials["number"].isin([t.number for t in front])].reset_index(drop=True)
        best = max(front, key=lambda t: (t.values[1], t.values[0]))
    values = dict(zip(names, best.values))
    cls = _model_class(ctx["model"])
    params = S.suggest(optuna.trial.FixedTrial(best.params), ctx["space"])
    model = None
    if train_best:
        init, plan, train = S.split(params, cls)
        cellvi.settings.seed = ctx["seed"]
        model = cls(adata, **init)
        model.train(max_epochs=ctx["max_epochs"], plan_kwargs=plan, enable_progress_bar=False, **train)
    searched = [k for k, v in ctx["space"].items() if isinstance(v, (dict, list, tuple))]
    importances = param_importances(study, names)
    figures = {"objective_vs_params": plot_objective_vs_params(trials, searched, names)}
    if not importances.empty:
        figures["param_importances"] = plot_importances(importances)
    result = TuneResult(params, values, model, trials, pareto, study, search_s, figures)
    if outdir is not None:
        _write(result, outdir, importances, ctx)
    return result


def _write(result, outdir: Path, importances: pd.DataFrame, ctx: dict) -> None:
    states = result.trials["state"].value_counts().to_dict()
    summary = {
        "best_params": result.best_params,
        "best_values": result.best_values,
        "objective": ctx["objective"],
        "n_trials": len(result.trials),
        "trial_states": states,
        "search_s": round(result.search_s, 1),
        "max_epochs": ctx["max_epochs"],
        "storage": ctx["storage"],
        "study_name": ctx["study_name"],
    }
    (outdir / "best_config.json").write_text(json.dumps(summary, indent=1, default=_jsonable))
    result.trials.to_csv(outdir / "trials.csv", index=False)
    if result.pareto is not None:
        result.pareto.to_csv(outdir / "pareto.csv", index=False)
    if not importances.empty:
        importances.to_csv(outdir / "param_importances.csv")
    for name, fig in result.figures.items():
        fig.savefig(outdir / f"{name}.png", dpi=110)
    if result.model is not None:
        result.model.save(outdir / "best_model", overwrite=True)


def _jsonable(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return None if not math.isfinite(value) else float(value)
    return str(value)
