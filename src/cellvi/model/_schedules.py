"""Named training schedules of ``train(schedule=...)``: the epoch heuristic, learning rate and KL warm-up.

"scvi-tools" is scvi-tools' schedule and cellvi's default: ``min(400, round(400 * 20000 / n_cells))``
epochs at a constant learning rate of 1e-3, with the KL weight warmed up over 400 epochs. At the
default epochs of any dataset under 20,000 cells the KL weight therefore reaches 1 only at the very end.

"fast" trains an eighth of those epochs (at least 1): the KL weight is warmed up over the first half
of them and the learning rate follows :func:`cellvi.train.schedule.learning_rate`'s "warmup_cosine" up
to 2e-3 and down to 2e-5. On 20,000 simulated cells it reaches the held-out ELBO of scvi-tools' 400
epochs in about a tenth of the training (docs/training.md, bench/results/speed_ttq.md). It is not the
default because a good ELBO is not a good integration: on 1,200 cells its 50 epochs mixed the batches
far less (scIB batch correction 0.34 against 0.85), and on 20,000 simulated cells less (0.70 against
0.87; bench/results/schedule_integration.md).

Whatever the schedule sets, an explicit ``max_epochs`` or ``plan_kwargs`` entry of the caller wins.
"""

from __future__ import annotations

from ..errors import InvalidParameterError

SCHEDULES = ("scvi-tools", "fast")
FAST_EPOCH_DIVISOR = 8
FAST_PLAN = {"lr": 2e-3, "lr_schedule": "warmup_cosine", "lr_warmup_steps": 100, "lr_min_fraction": 0.01}


def scvi_tools_epochs(n_cells: int) -> int:
    """scvi-tools' epoch heuristic: 400 epochs up to 20,000 cells, fewer above (at least 1)."""
    return int(min(400, max(1, round(400 * 20000 / n_cells))))


def resolve_schedule(schedule: str, n_cells: int, max_epochs: int | None, plan_kwargs: dict | None) -> tuple:
    """(max_epochs, plan_kwargs) of ``schedule`` for ``n_cells`` cells, with the caller's own settings
    (``max_epochs`` not None, any ``plan_kwargs`` key) kept over the schedule's."""
    if schedule not in SCHEDULES:
        raise InvalidParameterError(f"schedule must be one of {list(SCHEDULES)}, got {schedule!r}.")
    plan = dict(plan_kwargs or {})
    if schedule == "scvi-tools":
        return (scvi_tools_epochs(n_cells) if max_epochs is None else max_epochs), plan
    if max_epochs is None:
        max_epochs = max(1, round(scvi_tools_epochs(n_cells) / FAST_EPOCH_DIVISOR))
    fast = {**FAST_PLAN, "n_epochs_kl_warmup": max(1, max_epochs // 2)}
    return max_epochs, {**fast, **plan}
