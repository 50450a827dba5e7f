"""The hyper-parameter search space of :func:`cellvi.autotune.tune`.

A space maps a parameter name to one of:

* ``{"type": "int", "low": a, "high": b, "log": bool}`` or ``{"type": "float", ...}``: a range;
* a list or tuple: the choices of a categorical parameter;
* any other value: fixed (not searched, but passed on).

Each name is a known parameter: of the model (``n_latent``, ``n_hidden``, ``n_layers``, ``dropout_rate``,
``gene_likelihood``, ``dispersion``, ... every argument of :class:`cellvi.model.SCVI`), of the optimiser
and KL warm-up (``lr``, ``weight_decay``, ``n_epochs_kl_warmup``, ``max_kl_weight``) or of training
(``batch_size``).
"""

from __future__ import annotations

import inspect

from ..errors import InvalidParameterError

#: The default search space (see docs/autotune.md for why these ranges).
DEFAULT_SPACE: dict = {
    "n_latent": {"type": "int", "low": 5, "high": 30},
    "n_hidden": [64, 128, 256],
    "n_layers": {"type": "int", "low": 1, "high": 3},
    "dropout_rate": {"type": "float", "low": 0.0, "high": 0.3},
    "gene_likelihood": ["zinb", "nb"],
    "dispersion": ["gene", "gene-batch"],
    "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "n_epochs_kl_warmup": {"type": "int", "low": 1, "high": 400, "log": True},
    "batch_size": [64, 128, 256, 512],
}

PLAN_PARAMS = ("lr", "weight_decay", "eps", "n_epochs_kl_warmup", "n_steps_kl_warmup", "max_kl_weight", "min_kl_weight")
TRAIN_PARAMS = ("batch_size",)


def model_params(model_cls) -> tuple[str, ...]:
    """The hyper-parameters of ``model_cls.__init__`` (besides ``adata``)."""
    names = list(inspect.signature(model_cls.__init__).parameters)
    return tuple(n for n in names if n not in ("self", "adata"))


def check_space(space: dict, model_cls) -> dict:
    """Check ``space`` (see the module docstring); returns a copy. Raises InvalidParameterError naming the
    problem: an empty space, an unknown parameter, or a malformed range or list of choices."""
    if not isinstance(space, dict) or not space:
        raise InvalidParameterError(
            "The search space is empty: give at least one parameter, e.g. {'n_latent': {'type': 'int', "
            "'low': 5, 'high': 30}}, or None for the default space."
        )
    known = set(model_params(model_cls)) | set(PLAN_PARAMS) | set(TRAIN_PARAMS)
    unknown = sorted(set(space) - known)
    if unknown:
        raise InvalidParameterError(f"Unknown parameters in the search space: {unknown}. Known: {sorted(known)}.")
    out = {}
    for name, spec in space.items():
        if isinstance(spec, dict):
            kind = spec.get("type")
            if kind not in ("int", "float") or "low" not in spec or "high" not in spec:
                raise InvalidParameterError(
                    f"Search space {name!r}: a range needs 'type' ('int' or 'float'), 'low' and 'high'; got {spec}."
                )
            if not spec["low"] <= spec["high"]:
                raise InvalidParameterError(f"Search space {name!r}: low must not exceed high; got {spec}.")
            if spec.get("log") and spec["low"] <= 0:
                raise InvalidParameterError(f"Search space {name!r}: a log range needs low > 0; got {spec}.")
        elif isinstance(spec, (list, tuple)) and not spec:
            raise InvalidParameterError(f"Search space {name!r}: the list of choices is empty.")
        out[name] = spec
    return out


def suggest(trial, space: dict) -> dict:
    """One configuration drawn by the Optuna ``trial`` from ``space``."""
    params = {}
    for name, spec in space.items():
        if isinstance(spec, dict):
            draw = trial.suggest_int if spec["type"] == "int" else trial.suggest_float
            params[name] = draw(name, spec["low"], spec["high"], log=bool(spec.get("log", False)))
        elif isinstance(spec, (list, tuple)):
            params[name] = trial.suggest_categorical(name, list(spec))
        else:
            params[name] = spec
    return params


def split(params: dict, model_cls) -> tuple[dict, dict, dict]:
    """(model init kwargs, plan_kwargs, train kwargs) of a configuration."""
    init = {k: v for k, v in params.items() if k in model_params(model_cls)}
    plan = {k: v for k, v in params.items() if k in PLAN_PARAMS}
    train = {k: v for k, v in params.items() if k in TRAIN_PARAMS}
    return init, plan, train
