"""Differential abundance on the latent: how likely each cell's latent is under each sample's aggregated
posterior (scvi-tools' ``differential_abundance``).

A sample's aggregated posterior is the equal-weight mixture of its cells' posteriors q(z | x_j), each a
diagonal Gaussian N(m_j, v_j) (or a Student-t with the same location and scale). A cell i whose
latent mean u_i lies where sample s has many cells gets a high ``log p_s(u_i)``; comparing these
across samples (e.g. the difference between conditions) says which cell states a sample has more of.

Cost: every cell against every component, in chunks, so time is O(cells x components x n_latent) and
memory O(chunk x components); ``num_cells_posterior`` caps the components per sample.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def mixture_log_density(
    u: np.ndarray,
    means: np.ndarray,
    variances: np.ndarray,
    dof: float | None = None,
    chunk: int = 512,
) -> np.ndarray:
    """log of the equal-weight mixture density at each row of ``u``.

    u: (n, d) points; means, variances: (k, d) the components' diagonal Gaussians (variances > 0);
    dof: None for Gaussian components, else Student-t components with ``dof`` degrees of freedom,
    location ``means`` and scale ``sqrt(variances)``. Returns (n,) float64 in nats:
    ``logsumexp_j log N(u_i; m_j, v_j) - log k``.
    """
    U = torch.as_tensor(np.asarray(u), dtype=torch.float64)
    M = torch.as_tensor(np.asarray(means), dtype=torch.float64)
    V = torch.as_tensor(np.asarray(variances), dtype=torch.float64)
    k, d = M.shape
    if dof is None:
        const = -0.5 * (torch.log(V).sum(1) + d * math.log(2 * math.pi))  # (k,)
    else:
        const = d * (math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2) - 0.5 * math.log(dof * math.pi))
        const = const - 0.5 * torch.log(V).sum(1)
    out = []
    for lo in range(0, len(U), chunk):
        sq = (U[lo : lo + chunk, None, :] - M[None]) ** 2 / V[None]  # (b, k, d)
        if dof is None:
            log_comp = const - 0.5 * sq.sum(-1)
        else:
            log_comp = const - (dof + 1) / 2 * torch.log1p(sq / dof).sum(-1)
        out.append(torch.logsumexp(log_comp, dim=1) - math.log(k))
    return torch.cat(out).numpy() if out else np.zeros(0)
