"""Integrated gradients (Sundararajan et al. 2017) of a classifier's logit with respect to the counts, in
plain torch: the straight path from a baseline of zero counts to the cell's counts, integrated by
Gauss-Legendre quadrature after the substitution ``alpha = t**2``, which puts more points near zero where
the encoder's ``log1p`` makes the gradient steep (measured: at 64 points the completeness error fell from
~60% to ~3% of the logit gap on a small SCANVI). Completeness: the attributions of a cell sum to
``f(x) - f(baseline)`` up to the quadrature error."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


def integrated_gradients(
    forward: Callable[[dict], torch.Tensor], batch: dict, target: torch.Tensor, n_steps: int = 50
) -> torch.Tensor:
    """Attributions (n_cells, n_genes) of the logit ``target`` (n_cells,) class codes of ``forward``
    (a minibatch dict -> logits (n_cells, n_classes)) to each gene's count in ``batch["X"]`` (dense
    counts, n_cells x n_genes); the baseline is zero counts, the other entries of ``batch`` are kept."""
    x = batch["X"].detach()
    nodes, weights = np.polynomial.legendre.leggauss(n_steps)
    t = (nodes + 1.0) / 2.0  # Gauss-Legendre on [0, 1]
    alphas, weights = t**2, weights / 2.0 * 2.0 * t  # d alpha = 2 t dt
    total = torch.zeros_like(x)
    rows = torch.arange(len(x), device=x.device)
    for alpha, w in zip(alphas, weights):
        scaled = (x * float(alpha)).requires_grad_(True)
        logit = forward({**batch, "X": scaled})[rows, target].sum()
        (grad,) = torch.autograd.grad(logit, scaled)
        total += float(w) * grad
    return total * x
