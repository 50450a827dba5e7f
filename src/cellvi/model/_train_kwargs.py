"""scvi-tools' extra ``train()`` keywords: which cellvi honours, which it ignores (with a warning), and a
clear error, up front, for every other one (they never reach the module's loss)."""

from __future__ import annotations

import warnings

import torch

from ..errors import InvalidParameterError

# keywords of scvi-tools' train()/Lightning Trainer that change nothing cellvi computes
IGNORED = {
    "load_sparse_tensor": "cellvi's loaders always read sparse data as it is",
    "shuffle_set_split": "cellvi always draws the train/validation split at random (from settings.seed)",
    "datasplitter_kwargs": "cellvi has no data splitter object",
    "logger": "cellvi records the history in model.history, not through a Lightning logger",
    "log_every_n_steps": "cellvi logs once per epoch",
    "enable_checkpointing": "use checkpoint_dir= and checkpoint_every= for checkpoints",
    "enable_model_summary": "cellvi prints no model summary",
    "num_sanity_val_steps": "cellvi runs no sanity validation",
    "simple_progress_bar": "cellvi has one progress bar",
    "progress_bar_refresh_rate": "cellvi has one progress bar",
    "deterministic": "cellvi is deterministic on CPU for a given settings.seed",
    "benchmark": "no cuDNN autotuning in cellvi",
}
MONITORS = ("elbo_validation", "elbo_train")


def resolve(kwargs: dict, device) -> dict:
    """Check scvi-tools' extra train() keywords. Returns the ones cellvi's trainer takes
    (``early_stopping_min_delta``, ``autocast_dtype`` from ``precision``); warns for ignored ones; raises InvalidParameterError naming any
    unknown or unsupported keyword before training starts."""
    out: dict = {}
    unknown = []
    for key, value in kwargs.items():
        if key in IGNORED:
            warnings.warn(
                f"train({key}=...) is accepted for scvi-tools compatibility and ignored: {IGNORED[key]}.",
                UserWarning,
                stacklevel=4,
            )
        elif key == "early_stopping_monitor":
            if value not in MONITORS:
                raise InvalidParameterError(
                    f"early_stopping_monitor={value!r} is not supported: cellvi stops on the ELBO ({list(MONITORS)}; "
                    "the validation ELBO when there are validation cells)."
                )
        elif key == "early_stopping_mode":
            if value != "min":
                raise InvalidParameterError("early_stopping_mode must be 'min' (the negative ELBO decreases).")
        elif key == "early_stopping_min_delta":
            if not isinstance(value, (int, float)) or value < 0:
                raise InvalidParameterError(f"early_stopping_min_delta must be a number >= 0, got {value!r}.")
            out["early_stopping_min_delta"] = float(value)
        elif key == "accelerator":
            _check_accelerator(value, device)
        elif key == "devices":
            if value not in ("auto", 1, [0], "1", None, -1):
                raise InvalidParameterError(
                    f"devices={value!r}: cellvi trains on one device (cellvi.settings.device); multi-device "
                    "training is not supported."
                )
        elif key == "precision":
            out.update(_precision(value, device))
        else:
            unknown.append(key)
    if unknown:
        raise InvalidParameterError(
            f"train() got unexpected keyword argument(s) {unknown}. cellvi accepts its own (see help(model.train)), "
            f"and of scvi-tools' extras: early_stopping_monitor, early_stopping_min_delta, early_stopping_mode, "
            f"accelerator, devices, precision, and ignores {sorted(IGNORED)}. Optimiser settings such as lr or "
            "n_epochs_kl_warmup go in plan_kwargs={...}."
        )
    return out


PRECISIONS = {"32": None, "32-true": None, "bf16-mixed": torch.bfloat16, "bf16": torch.bfloat16}


def _precision(value, device) -> dict:
    """Lightning's ``precision`` names: "32" / "32-true" (float32, the default) or "bf16-mixed" (the
    matrix products of training steps in bfloat16 under autocast; weights, gradients, optimiser,
    likelihood, validation and every output stay float32)."""
    key = str(value)
    if key not in PRECISIONS:
        raise InvalidParameterError(
            f"precision={value!r} is not supported: cellvi trains in '32-true' (default) or 'bf16-mixed'. "
            "float16 ('16-mixed') would need loss scaling and 'bf16-true' float16 weights; neither is offered."
        )
    dtype = PRECISIONS[key]
    if dtype is not None and device.type == "cpu" and not _cpu_has_bf16():
        warnings.warn(
            "precision='bf16-mixed': this CPU has no native bfloat16 instructions (AVX512-BF16 or AMX), so "
            "bfloat16 matrix products are emulated and training may be slower than in float32.",
            UserWarning,
            stacklevel=5,
        )
    return {"autocast_dtype": dtype}


def _cpu_has_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _check_accelerator(value, device) -> None:
    if value in (None, "auto"):
        return
    kind = {"gpu": "cuda", "cuda": "cuda", "cpu": "cpu", "mps": "mps"}.get(str(value))
    if kind is None:
        raise InvalidParameterError(f"accelerator={value!r} is not one of 'auto', 'cpu', 'gpu', 'cuda', 'mps'.")
    if kind != device.type:
        raise InvalidParameterError(
            f"accelerator={value!r}, but this model is on {device}. cellvi chooses the device when the model "
            f"is made: set cellvi.settings.device = {kind!r} before creating (or loading) it."
        )
