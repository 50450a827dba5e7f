"""Diagonal Gaussian densities and divergences, summed over the last axis (variances, not standard
deviations), for the latent variables' priors and posteriors."""

from __future__ import annotations

import numpy as np
import torch


def kl_normal(m_q, v_q, m_p, v_p) -> torch.Tensor:
    """KL(N(m_q, v_q) || N(m_p, v_p)) summed over the last axis; variances, not standard deviations."""
    return 0.5 * (torch.log(v_p / v_q) + (v_q + (m_q - m_p) ** 2) / v_p - 1).sum(-1)


def log_normal_density(x, m, v) -> torch.Tensor:
    """log N(x; m, v) summed over the last axis."""
    return (-0.5 * (np.log(2 * np.pi) + torch.log(v) + (x - m) ** 2 / v)).sum(-1)
