"""Learning-rate schedules of the training loop (``plan_kwargs={"lr_schedule": ...}``).

"constant" is scvi-tools' schedule: Adam at ``lr`` for every step. "warmup_cosine" raises the rate
linearly from ``lr / warmup_steps`` to ``lr`` over the first ``warmup_steps`` steps (Adam's early
moment estimates are noisy, and a large batch's larger rate would otherwise kick the weights far in
the first steps), then lowers it along half a cosine to ``lr * min_fraction`` at the last step, so the
last epochs average out the minibatch noise instead of wandering around the optimum.
"""

from __future__ import annotations

import math

from ..errors import InvalidParameterError

SCHEDULES = ("constant", "warmup_cosine")


def check_schedule(name: str, warmup_steps: int, min_fraction: float) -> None:
    """Raise InvalidParameterError for an unknown schedule or out-of-range settings."""
    if name not in SCHEDULES:
        raise InvalidParameterError(f"lr_schedule must be one of {list(SCHEDULES)}, got {name!r}.")
    if not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise InvalidParameterError(f"lr_warmup_steps must be an integer >= 0, got {warmup_steps!r}.")
    if not 0 <= min_fraction <= 1:
        raise InvalidParameterError(f"lr_min_fraction must be in [0, 1], got {min_fraction!r}.")


def learning_rate(
    name: str, lr: float, step: int, total_steps: int, warmup_steps: int = 0, min_fraction: float = 0.0
) -> float:
    """The learning rate at training step ``step`` (0-based) of a run of ``total_steps`` steps."""
    if name == "constant":
        return lr
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps - 1, 1)
    progress = min(max(step - warmup_steps, 0) / decay_steps, 1.0)
    return lr * (min_fraction + (1 - min_fraction) * 0.5 * (1 + math.cos(math.pi * progress)))
