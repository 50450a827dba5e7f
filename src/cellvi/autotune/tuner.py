"""Hyper-parameter search with Optuna: trials in parallel processes sharing one study (a journal file or
SQLite locally, PostgreSQL across machines), pruning on the validation ELBO per epoch, objectives held-out
ELBO and/or scIB total. See :func:`tune` and docs/autotune.md."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InvalidParameterError, InvalidTypeError, TrainingDivergedError
from . import space as S

OBJECTIVES = ("elbo", "scib", "both")
PRUNERS = ("median", "asha", None)
TUNE_KEY = "X_autotune"


@dataclass
class TuneResult:
    """What :func:`tune` returns (and writes to ``output_dir``)."""

    best_params: dict
    best_values: dict  # objective name -> value of the trial the model was trained with
    model: object  # a model trained with best_params on all the data (None if train_best=False)
    trials: pd.DataFrame  # one row per trial: number, state, values, params, user attributes
    pareto: pd.DataFrame | None  # objective="both": the Pareto-optimal trials
    study: object  # the optuna.Study
    search_s: float  # wall seconds of the search (not counting the final training)
    figures: dict = field(default_factory=dict)  # name -> matplotlib Figure


def _model_class(model):
    from .. import model as models

    if isinstance(model, str):
        if not hasattr(models, model) or model == "BaseModel":
            raise InvalidParameterError(f"Unknown model {model!r}; use 'SCVI' or 'LinearSCVI'.")
        return getattr(models, model)
    return model


def storage_of(url):
    """An Optuna storage for ``url``: a path (or ``journal:PATH``) is a journal file (safe for several
    processes on one machine); ``sqlite:///PATH``, ``postgresql://...`` and other database URLs go to
    Optuna's RDB storage."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    url = str(url)
    if url.startswith(("postgresql://", "postgres://")) and not _importable("psycopg"):
        url = "postgresql+psycopg2://" + url.split("://", 1)[1]  # SQLAlchemy 2.1's default driver is psycopg 3
    if "://" in url and not url.startswith("journal:"):
        return optuna.storages.RDBStorage(url)
    path = url.removeprefix("journal:")
    return JournalStorage(JournalFileBackend(path))


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _pruner(name, max_epochs):
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=max(1, max_epochs // 5))
    if name == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, max_epochs // 8), reduction_factor=3)
    return optuna.pruners.NopPruner()


def _scib_total(model, adata, batch_key, label_key) -> float:
    """scIB total (0.6 bio + 0.4 batch) of the model's latent, by cellvi.analysis.benchmark_integration."""
    try:
        from ..analysis import benchmark_integration
    except ImportError as exc:
        raise InvalidParameterError(
            "objective 'scib' needs cellvi.analysis.benchmark_integration (the 'integration' extra, "
            "scib-metrics), which this cellvi does not have; use objective='elbo'."
        ) from exc
    adata.obsm[TUNE_KEY] = model.get_latent_representation(obsm_key=None)
    try:
        df = benchmark_integration(adata, [TUNE_KEY], batch_key, label_key, neighbors="exact")
    finally:
        del adata.obsm[TUNE_KEY]
    return float(df.loc[TUNE_KEY, "Total"])


def _objective_fn(ctx: dict, adata):
    """The function Optuna calls per trial, for this process."""
    import optuna

    import cellvi

    cls = _model_class(ctx["model"])
    multi = ctx["objective"] == "both"

    def objective(trial):
        params = S.suggest(trial, ctx["space"])
        init, plan, train = S.split(params, cls)
        cellvi.settings.seed = ctx["seed"]  # the same train/validation split in every trial
        model = cls(adata, **init)
        callbacks = []
        if ctx["pruner"] is not None and not multi:

            def report(epoch, row):
                elbo = -row["elbo_validation"]  # the history holds the negative ELBO (scvi-tools' sign)
                trial.report(elbo, epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"validation ELBO {elbo:.2f} at epoch {epoch}")

            callbacks.append(report)
        trial.set_user_attr("pid", os.getpid())  # the worker process, also for trials pruned in training
        t0 = time.perf_counter()
        model.train(
            max_epochs=ctx["max_epochs"],
            plan_kwargs=plan,
            callbacks=callbacks,
            enable_progress_bar=False,
            check_val_every_n_epoch=1 if callbacks else None,
            **train,
        )
        elbo = -float(model.history["elbo_validation"].dropna().iloc[-1])  # history: the negative ELBO
        trial.set_user_attr("train_s", time.perf_counter() - t0)
        trial.set_user_attr("elbo_validation", elbo)
        if not math.isfinite(elbo):
            raise TrainingDivergedError(f"the validation ELBO is {elbo}")
        if ctx["objective"] == "elbo":
            return elbo
        total = _scib_total(model, adata, ctx["batch_key"], ctx["label_key"])
        trial.set_user_attr("scib_total", total)
        return (elbo, total) if multi else total

    return objective


def _read(ctx):
    import anndata

    adata = anndata.read_h5ad(ctx["data_path"])
    _model_class(ctx["model"]).setup_anndata(adata, **ctx["setup"])
    return adata


def _optimize(ctx: dict, n_trials: int, worker: int, adata=None) -> None:
    """Run ``n_trials`` trials of the shared study in this process (a worker, or the caller)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if ctx["threads"]:
        import torch

        torch.set_num_threads(ctx["threads"])
    adata = _read(ctx) if adata is None else adata
    study = optuna.load_study(
        study_name=ctx["study_name"],
        storage=storage_of(ctx["storage"]),
        sampler=optuna.samplers.TPESampler(seed=ctx["seed"] + worker),
        pruner=_pruner(ctx["pruner"], ctx["max_epochs"]),
    )
    study.optimize(_objective_fn(ctx, adata), n_trials=n_trials, catch=(TrainingDivergedError,))


def tune(
    adata,
    search_space: dict | None = None,
    objective: str = "elbo",
    n_trials: int = 20,
    n_jobs: int = 1,
    storage: str | None = None,
    study_name: str | None = None,
    model="SCVI",
    max_epochs: int = 100,
    batch_key: str | None = None,
    label_key: str | None = None,
    setup_kwargs: dict | None = None,
    pruner: str | None = "median",
    seed: int = 0,
    output_dir: str | os.PathLike | None = None,
    train_best: bool = True,
    threads_per_job: int | None = None,
) -> TuneResult:
    """Search hyper-parameters of ``model`` (SCVI by default) on ``adata`` (an AnnData or an .h5ad path).

    Parameters
    ----------
    search_space
        See :mod:`cellvi.autotune.space`; default :data:`~cellvi.autotune.DEFAULT_SPACE`.
    objective
        "elbo": the held-out ELBO per cell (nats, maximised; the same validation cells, 10%, in every
        trial); "scib": the scIB total of the latent (needs ``batch_key`` and ``label_key``); "both": a
        two-objective search, its Pareto front in ``result.pareto``; the model is then trained with the
        Pareto trial of the best scIB total.
    n_trials, n_jobs
        Trials in all, run by ``n_jobs`` processes on this machine (split evenly) sharing the study.
    storage, study_name
        Optuna storage: None (a journal file in ``output_dir`` or a temporary folder), a journal file
        path, ``sqlite:///PATH`` or ``postgresql://user@host:port/db``. With the same URL and name,
        ``cellvi tune`` on other machines joins the study (``load_if_exists``).
    max_epochs
        Epochs per trial.
    pruner
        "median" (Optuna's MedianPruner) or "asha" (successive halving) on the validation ELBO after
        each epoch, or None; pruning applies to the single objectives only (Optuna cannot prune
        multi-objective trials).
    setup_kwargs
        More arguments of ``setup_anndata`` (e.g. ``layer``, covariates).
    threads_per_job
        Torch threads of each process (default 1 when ``n_jobs > 1``).

    Returns
    -------
    TuneResult
        A trial whose training diverges is recorded as failed and the search goes on. With
        ``output_dir`` also writes best_config.json, trials.csv, pareto.csv, the plots
        (objective_vs_params.png, param_importances.png) and the trained model (best_model/).
    """
    import anndata
    import optuna

    if objective not in OBJECTIVES:
        raise InvalidParameterError(f"objective must be one of {list(OBJECTIVES)}, got {objective!r}.")
    if pruner not in PRUNERS:
        raise InvalidParameterError(f"pruner must be one of {list(PRUNERS)}, got {pruner!r}.")
    for name, value in (("n_trials", n_trials), ("n_jobs", n_jobs), ("max_epochs", max_epochs)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise InvalidParameterError(f"{name} must be a positive integer, got {value!r}.")
    if objective != "elbo" and (batch_key is None or label_key is None):
        raise InvalidParameterError(f"objective {objective!r} needs batch_key and label_key (the scIB metrics).")
    cls = _model_class(model)
    space = S.check_space(S.DEFAULT_SPACE if search_space is None else search_space, cls)
    work = Path(output_dir) if output_dir is not None else Path(tempfile.mkdtemp(prefix="cellvi-tune-"))
    work.mkdir(parents=True, exist_ok=True)
    if isinstance(adata, (str, os.PathLike)):
        data_path = str(adata)
        adata = None
    elif isinstance(adata, anndata.AnnData):
        data_path = None
    else:
        raise InvalidTypeError(f"adata must be an AnnData or an .h5ad path, not {type(adata).__name__}.")
    if data_path is None and n_jobs > 1:  # the worker processes read the data from a file
        data_path = str(work / "tune_input.h5ad")
        adata.write_h5ad(data_path)
    ctx = {
        "model": cls.__name__,
        "space": space,
        "objective": objective,
        "max_epochs": int(max_epochs),
        "pruner": pruner,
        "seed": int(seed),
        "batch_key": batch_key,
        "label_key": label_key,
        "setup": {"batch_key": batch_key, **(setup_kwargs or {})},
        "data_path": data_path,
        "storage": str(storage) if storage is not None else str(work / "optuna_journal.log"),
        "study_name": study_name or "cellvi-tune",
        "threads": threads_per_job if threads_per_job is not None else (1 if n_jobs > 1 else 0),
    }
    directions = ["maximize", "maximize"] if objective == "both" else ["maximize"]
    optuna.create_study(
        storage=storage_of(ctx["storage"]), study_name=ctx["study_name"], directions=directions, load_if_exists=True
    )
    if adata is None:
        adata = _read(ctx)
    else:
        adata = adata.copy()
        cls.setup_anndata(adata, **ctx["setup"])
    t0 = time.perf_counter()
    shares = [n_trials // n_jobs + (i < n_trials % n_jobs) for i in range(n_jobs)]
    if n_jobs == 1:
        _optimize(ctx, n_trials, 0, adata)
    else:  # fresh interpreters (not fork: torch's threads; not spawn: it re-runs the caller's script)
        ctx_path = work / f"tune_ctx_{os.getpid()}.json"
        ctx_path.write_text(json.dumps(ctx))
        procs = [
            subprocess.Popen([sys.executable, "-m", "cellvi.autotune._worker", str(ctx_path), str(k), str(i)])
            for i, k in enumerate(shares)
            if k
        ]
        codes = [p.wait() for p in procs]
        ctx_path.unlink(missing_ok=True)
        if any(codes):
            warnings.warn(
                f"{sum(c != 0 for c in codes)} of {len(codes)} tuning processes failed (exit codes "
                f"{codes}); the study holds the trials that finished.",
                RuntimeWarning,
                stacklevel=2,
            )
    search_s = time.perf_counter() - t0
    from .report import summarize

    return summarize(ctx, adata, work if output_dir is not None else None, search_s, train_best)
