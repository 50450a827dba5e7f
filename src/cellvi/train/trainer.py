"""The training loop: a short, plain script over minibatches.

Per epoch: shuffle, step Adam over the training minibatches with the KL term warmed up, evaluate the
validation cells, log one row of history, maybe stop early, maybe write a checkpoint. Per-step work
stays on the tensors: losses are summed on the device and read once per epoch, so there is no
per-step synchronisation or logging overhead.

Under torchrun the same loop runs on every rank; the hooks of :mod:`cellvi.train.distributed` (each a
no-op in one process) average the gradients, sum the epoch's metrics over ranks (so the history and
early stopping are those of all cells, and all ranks stop together) and write checkpoints from rank 0.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..data.loaders import MinibatchLoader
from ..errors import InvalidParameterError, ModelFileError, TrainingDivergedError
from . import checkpoint as ckpt
from . import distributed
from .compiled import CompiledLoss, forward_backward
from .optim import AdamStep, make_adam
from .schedule import check_schedule, learning_rate

VALIDATION_SEED = 7_919  # validation draws z from its own stream, seeded with this + epoch


@dataclass
class TrainingPlan:
    """Optimiser and KL warm-up settings (``plan_kwargs`` of ``train``).

    lr: Adam learning rate. weight_decay: L2 penalty. eps: Adam epsilon.
    n_epochs_kl_warmup / n_steps_kl_warmup: the KL weight on z grows linearly from ``min_kl_weight``
    to ``max_kl_weight`` over this many epochs (or steps, which takes precedence when set).
    lr_schedule: "constant" (``lr`` at every step, as scvi-tools) or "warmup_cosine" (see
    :func:`cellvi.train.schedule.learning_rate`: ``lr`` reached linearly over ``lr_warmup_steps`` steps,
    then a cosine decay to ``lr * lr_min_fraction`` at the last step of ``max_epochs``).
    """

    lr: float = 1e-3
    weight_decay: float = 1e-6
    eps: float = 0.01
    n_epochs_kl_warmup: int | None = 400
    n_steps_kl_warmup: int | None = None
    max_kl_weight: float = 1.0
    min_kl_weight: float = 0.0
    lr_schedule: str = "constant"
    lr_warmup_steps: int = 100
    lr_min_fraction: float = 0.01

    @classmethod
    def from_kwargs(cls, kwargs: dict | None) -> TrainingPlan:
        kwargs = dict(kwargs or {})
        unknown = set(kwargs) - set(cls.__dataclass_fields__)
        if unknown:
            raise InvalidParameterError(
                f"Unknown plan_kwargs {sorted(unknown)}; valid: {sorted(cls.__dataclass_fields__)}."
            )
        plan = cls(**kwargs)
        if plan.lr <= 0:
            raise InvalidParameterError(f"lr must be > 0, got {plan.lr}.")
        check_schedule(plan.lr_schedule, plan.lr_warmup_steps, plan.lr_min_fraction)
        return plan

    def learning_rate(self, step: int, total_steps: int) -> float:
        """Adam's learning rate at training step ``step`` (0-based) of ``total_steps``."""
        return learning_rate(self.lr_schedule, self.lr, step, total_steps, self.lr_warmup_steps, self.lr_min_fraction)

    def kl_weight(self, epoch: int, step: int) -> float:
        span = self.max_kl_weight - self.min_kl_weight
        if self.n_steps_kl_warmup:
            return min(self.max_kl_weight, self.min_kl_weight + span * step / self.n_steps_kl_warmup)
        if self.n_epochs_kl_warmup:
            return min(self.max_kl_weight, self.min_kl_weight + span * epoch / self.n_epochs_kl_warmup)
        return self.max_kl_weight


class LossWithTotals:
    """``module.loss`` with ``totals`` added: (3,) the minibatch's sums of the minimised loss, the
    reconstruction loss and the local KL, detached, for the epoch's means. Computed with the loss (and
    compiled with it), so that a training step adds one tensor to the epoch's sums, with no
    synchronisation with the device."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module

    def __call__(self, batch: dict, **kwargs) -> dict:
        out = self.module.loss(batch, **kwargs)
        kl = (out["kl_z"] + out["kl_l"]).detach()
        loss_sum = out["loss"].detach() * len(kl)
        out["totals"] = torch.stack([loss_sum, out["reconstruction_loss"].detach().sum(), kl.sum()]).double()
        return out


class Trainer:
    """Trains a module (see :mod:`cellvi.module`) whose ``loss(batch, kl_weight)`` returns ``loss`` and
    per-cell ``reconstruction_loss``, ``kl_z`` and ``kl_l``.

    ``fit()`` returns the history: one row per epoch with, for ``train`` and ``validation``, the mean per
    cell of ``elbo`` (as scvi-tools names it: the *negative* ELBO, lower is better),
    ``reconstruction_loss`` (-log p(x|z)) and ``kl_local`` (KL of z and library), for a module whose
    loss reports labelled cells (scANVI) ``<train|validation>_classification_loss``, ``_accuracy`` and
    ``_calibration_error`` (ECE), plus ``loss_train`` (what was minimised, with the warmed-up KL weight),
    ``kl_weight``, ``lr`` (the learning rate of the epoch's last step) and ``epoch_end_s`` (wall seconds since the start of ``fit``).
    """

    def __init__(
        self,
        module: torch.nn.Module,
        train_loader: MinibatchLoader,
        val_loader: MinibatchLoader | None,
        plan: TrainingPlan,
        max_epochs: int,
        early_stopping: bool = False,
        early_stopping_patience: int = 45,
        early_stopping_min_delta: float = 0.0,
        progress_bar: bool = True,
        checkpoint_dir: str | None = None,
        checkpoint_every: int | None = None,
        resume: bool = False,
        extra_loss_kwargs: dict | None = None,
        callbacks: list | None = None,
        compile_loss: bool = False,
        check_val_every_n_epoch: int | None = None,
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        self.module = module
        self.train_loader, self.val_loader = train_loader, val_loader
        self.plan = plan
        self.max_epochs = int(max_epochs)
        self.early_stopping = early_stopping
        self.patience = early_stopping_patience
        self.min_delta = early_stopping_min_delta
        self.progress_bar = progress_bar
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every = checkpoint_every
        self.resume = resume
        self.extra_loss_kwargs = extra_loss_kwargs or {}
        self.callbacks = list(callbacks or [])
        self.loss = LossWithTotals(module)
        self.train_loss = distributed.wrap_loss(module, self.loss)  # DDP under torchrun
        self.compiled_loss = CompiledLoss(self.train_loss) if compile_loss else None
        self.autocast_dtype = autocast_dtype  # training steps only: validation stays float32
        n_val = 0 if val_loader is None else len(val_loader.indices)
        self.has_validation = distributed.any_rank(n_val > 0)  # a rank's share may be empty
        self.check_val_every_n_epoch = check_val_every_n_epoch
        params = [p for p in module.parameters() if p.requires_grad]
        self.optimizer = make_adam(params, lr=plan.lr, eps=plan.eps, weight_decay=plan.weight_decay)
        self.optimizer_step = AdamStep(self.optimizer)
        self.total_steps = self.max_epochs * len(train_loader)  # of the learning-rate schedule
        self.rows: list[dict] = []
        self.step = 0
        self.best = math.inf
        self.epochs_since_best = 0

    # ------------------------------------------------------------------ one pass
    def _run_epoch(self, loader: MinibatchLoader, epoch: int, train: bool) -> dict:
        self.module.train(train)
        device = next(self.module.parameters()).device
        sums = torch.zeros(3, dtype=torch.float64, device=device)
        cls_sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss x n, correct, n labelled
        calib = None  # (3, n_bins): cells, summed confidence, correct per confidence bin
        n_cells = 0
        kl_w = 1.0
        with torch.set_grad_enabled(train):
            for batch in loader:
                if train:
                    kl_w = self.plan.kl_weight(epoch, self.step)
                    if self.plan.lr_schedule != "constant":
                        lr = self.plan.learning_rate(self.step, self.total_steps)
                        for group in self.optimizer.param_groups:
                            group["lr"] = lr
                    out = self._forward_backward(batch, kl_w)
                    self.optimizer_step()
                    self.step += 1
                else:
                    out = self.loss(batch, kl_weight=kl_w, **self.extra_loss_kwargs)
                sums += out["totals"]
                n_cells += len(out["kl_z"])
                if "classification_n" in out:  # scANVI: classification loss and accuracy on labelled cells
                    n_lab = out["classification_n"].double()
                    cls_sums += torch.stack(
                        [out["classification_loss"].double() * n_lab, out["classification_correct"].double(), n_lab]
                    )
                    if "calibration_bins" in out:
                        bins = out["calibration_bins"].double()
                        calib = bins if calib is None else calib + bins
        if train:
            distributed.sync_buffers(self.module)
        # one all-reduce for the epoch's sums (a no-op on one process), with how many ranks have calibration
        # bins and their summed widths (a rank whose share of the cells is empty has none)
        n_bins = 0 if calib is None else calib.shape[1]
        has_bins = sums.new_tensor([float(calib is not None), float(n_bins)])
        totals = distributed.sum_over_ranks(torch.cat([sums, sums.new_tensor([n_cells]), cls_sums, has_bins])).cpu()
        mean = (totals[:3] / max(float(totals[3]), 1.0)).tolist()
        cls_sums = totals[4:7]
        if totals[7] > 0:  # the bins of the whole data: summed over ranks
            n_bins = int(totals[8] / totals[7])
            calib = distributed.sum_over_ranks(calib if calib is not None else sums.new_zeros((3, n_bins)))
        tag = "train" if train else "validation"
        row = {  # scvi-tools' names and signs: "elbo" is the negative ELBO, lower is better
            f"elbo_{tag}": mean[1] + mean[2],
            f"reconstruction_loss_{tag}": mean[1],
            f"kl_local_{tag}": mean[2],
        }
        loss_x_n, correct, n_lab = cls_sums.cpu().tolist()
        if n_lab > 0:
            row[f"{tag}_classification_loss"] = loss_x_n / n_lab
            row[f"{tag}_accuracy"] = correct / n_lab
            if calib is not None:  # expected calibration error: |accuracy - confidence| per bin, weighted
                _, conf, right = calib.cpu()
                row[f"{tag}_calibration_error"] = float((conf - right).abs().sum() / n_lab)
        if train:
            row["loss_train"] = mean[0]
            row["kl_weight"] = kl_w
            row["lr"] = float(self.optimizer.param_groups[0]["lr"])  # of the epoch's last step
        return row

    def _forward_backward(self, batch: dict, kl_w: float) -> dict:
        if self.compiled_loss is not None:
            return self.compiled_loss.step(
                self.optimizer, batch, self.autocast_dtype, kl_weight=kl_w, **self.extra_loss_kwargs
            )
        return forward_backward(
            self.train_loss, self.optimizer, batch, self.autocast_dtype, kl_weight=kl_w, **self.extra_loss_kwargs
        )

    def _validate_now(self, epoch: int) -> bool:
        """Validation every ``check_val_every_n_epoch`` epochs; by default (None) every epoch with early
        stopping, else only after the last epoch (as scvi-tools, which skips it unless asked)."""
        if not self.has_validation:
            return False
        last = epoch + 1 == self.max_epochs
        if self.check_val_every_n_epoch is None:
            return self.early_stopping or last
        return last or (epoch + 1) % self.check_val_every_n_epoch == 0

    # ------------------------------------------------------------------ the loop
    def fit(self) -> pd.DataFrame:
        start_epoch = 0
        if self.resume and self.checkpoint_dir:
            start_epoch = self._load_checkpoint()
        distributed.seed_ranks()  # different dropout and z draws on each rank
        last_good = copy.deepcopy(self.module.state_dict())
        t0 = time.perf_counter() - (self.rows[-1]["epoch_end_s"] if self.rows else 0.0)
        bar = tqdm(
            range(start_epoch, self.max_epochs),
            disable=not (self.progress_bar and distributed.world().main),
            desc="Training",
            unit="epoch",
            initial=start_epoch,
            total=self.max_epochs,
        )
        for epoch in bar:
            self.train_loader.set_epoch(epoch)
            row = {"epoch": epoch, **self._run_epoch(self.train_loader, epoch, train=True)}
            if not math.isfinite(row["loss_train"]):
                self.module.load_state_dict(last_good)
                raise TrainingDivergedError(
                    f"The training loss became {row['loss_train']} in epoch {epoch}; the weights of the last "
                    "good epoch were restored. Likely causes: a learning rate too high (try plan_kwargs="
                    "{'lr': 1e-4}), counts that are not raw, or extreme library sizes."
                )
            if self._validate_now(epoch):
                # with its own random stream: how often validation runs never changes the training
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(VALIDATION_SEED + epoch)
                    row.update(self._run_epoch(self.val_loader, epoch, train=False))
            row["epoch_end_s"] = time.perf_counter() - t0
            self.rows.append(row)
            last_good = copy.deepcopy(self.module.state_dict())
            bar.set_postfix(elbo=f"{row['elbo_train']:.1f}", refresh=False)
            stop = self._early_stop(row)
            for callback in self.callbacks:  # callback(epoch, row) -> True asks to stop
                stop = bool(callback(epoch, row)) or stop
            stop = distributed.any_rank(stop)  # a callback may ask on one rank only
            if self.checkpoint_dir and self.checkpoint_every and (epoch + 1) % self.checkpoint_every == 0:
                distributed.on_main(lambda: self._save_checkpoint(epoch + 1))  # noqa: B023 - called now
            if stop:
                break
        bar.close()
        return self.history()

    def history(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows).set_index("epoch") if self.rows else pd.DataFrame()

    def _early_stop(self, row: dict) -> bool:
        if not self.early_stopping:
            return False
        key = "elbo_validation" if "elbo_validation" in row else "elbo_train"
        if row[key] < self.best - self.min_delta:  # the negative ELBO went down
            self.best, self.epochs_since_best = row[key], 0
            return False
        self.epochs_since_best += 1
        return self.epochs_since_best >= self.patience

    # ------------------------------------------------------------------ checkpoints
    def _state(self, epoch: int) -> dict:
        return {
            "epoch": epoch,
            "step": self.step,
            "module": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "history": [dict(r) for r in self.rows],
            "early_stopping": [self.best, self.epochs_since_best],
            "plan": asdict(self.plan),
        }

    def _save_checkpoint(self, epoch: int) -> None:
        ckpt.save_checkpoint(self.checkpoint_dir, self._state(epoch))

    def _load_checkpoint(self) -> int:
        state = ckpt.load_checkpoint(self.checkpoint_dir)
        if state is None:
            return 0
        try:
            self.module.load_state_dict(state["module"])
            self.optimizer.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["torch_rng"])
            if state.get("cuda_rng") and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda_rng"])
            self.step = int(state["step"])
            self.rows = [dict(r) for r in state["history"]]
            self.best, self.epochs_since_best = state["early_stopping"]
            return int(state["epoch"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise ModelFileError(
                f"The checkpoint in {self.checkpoint_dir} does not fit this model ({str(exc)[:200]}). "
                "Delete it, or pass another checkpoint_dir."
            ) from exc
