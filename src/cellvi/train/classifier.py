"""Training a classifier on in-memory features: minibatch Adam on the cross-entropy, a validation
split, early stopping on the validation loss, and the weights of the best validation epoch kept.
Used by SOLO; a short plain loop, like :mod:`cellvi.train.trainer` without the VAE's parts."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


def _epoch_loss(module, X, y, order, batch_size, optimizer=None) -> float:
    """Mean cross-entropy over ``order``'s rows; one Adam step per minibatch when ``optimizer`` is given."""
    module.train(optimizer is not None)
    total = 0.0
    with torch.set_grad_enabled(optimizer is not None):
        for lo in range(0, len(order), batch_size):
            rows = order[lo : lo + batch_size]
            if optimizer is not None and len(rows) < 2:  # batch norm needs two rows
                continue
            loss = F.cross_entropy(module(X[rows]), y[rows], reduction="sum")
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)
                (loss / len(rows)).backward()
                optimizer.step()
            total += float(loss.detach())
    return total / max(len(order), 1)


def fit_classifier(
    module: torch.nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    max_epochs: int,
    lr: float,
    weight_decay: float,
    batch_size: int,
    early_stopping_patience: int | None,
    seed: int,
    progress: bool = True,
    min_delta: float = 0.0,
    warmup_epochs: int = 0,
) -> pd.DataFrame:
    """Train ``module`` (features X (n, d) -> logits) on the labels y (n,) int64 of ``train_idx``.

    Each epoch shuffles the training rows (a generator seeded with ``seed``), steps Adam over
    minibatches of ``batch_size`` and computes the mean cross-entropy (nats) of the validation rows.
    Stops after ``early_stopping_patience`` epochs without a validation loss ``min_delta`` below the
    best (None: never; not within the first ``warmup_epochs``) and then loads the weights of the best
    epoch. Returns the history: one row per epoch, ``train_loss`` and
    ``validation_loss`` (NaN without validation rows).
    """
    optimizer = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=weight_decay)
    rng = np.random.default_rng(seed)
    rows, best, best_state, since_best = [], np.inf, None, 0
    bar = tqdm(range(max_epochs), desc="Training", unit="epoch", disable=not progress)
    for _epoch in bar:
        train_loss = _epoch_loss(module, X, y, torch.as_tensor(rng.permutation(train_idx)), batch_size, optimizer)
        val_loss = _epoch_loss(module, X, y, torch.as_tensor(val_idx), batch_size) if len(val_idx) else np.nan
        rows.append({"train_loss": train_loss, "validation_loss": val_loss})
        bar.set_postfix(train_loss=f"{train_loss:.4f}", validation_loss=f"{val_loss:.4f}")
        monitored = val_loss if len(val_idx) else train_loss
        if monitored < best:
            best_state = copy.deepcopy(module.state_dict())
        if monitored < best - min_delta:
            since_best = 0
        else:
            since_best += 1
            stop = early_stopping_patience is not None and since_best >= early_stopping_patience
            if stop and _epoch + 1 > warmup_epochs:
                break
        best = min(best, monitored)
    bar.close()
    if best_state is not None:
        module.load_state_dict(best_state)
    module.eval()
    return pd.DataFrame(rows).rename_axis("epoch")
