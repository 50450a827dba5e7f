"""Hyper-parameter search for cellvi's models, on Optuna (see docs/autotune.md).

>>> from cellvi.autotune import tune
>>> result = tune(adata, objective="elbo", n_trials=20, n_jobs=2, batch_key="batch")
>>> result.best_params, result.trials, result.model
"""

from .space import DEFAULT_SPACE, check_space
from .tuner import TuneResult, storage_of, tune

__all__ = ["DEFAULT_SPACE", "TuneResult", "check_space", "storage_of", "tune"]
