"""Count likelihoods: negative binomial (NB), zero-inflated NB (ZINB) and Poisson, in log space.

Parameterisation (as in scVI): ``mu`` is the mean (> 0), ``theta`` the inverse dispersion (> 0; variance
``mu + mu**2 / theta``), ``pi_logits`` the logit of the zero-inflation probability.

Two flavours of each log-likelihood:

* ``log_nb`` / ``log_zinb`` / ``log_poisson`` return the log-probability of every entry, shape of ``x``.
* ``log_nb_sum`` / ``log_zinb_sum`` / ``log_poisson_sum`` return the sum over genes per cell, shape
  ``(n_cells,)``, and evaluate the special functions (``lgamma``, and ``digamma`` in the backward pass)
  only on the non-zero entries of ``x``. Single-cell counts are ~90% zeros, and for ``x = 0`` the terms
  ``lgamma(x + theta) - lgamma(theta) - lgamma(x + 1)`` vanish exactly, so this is the same value at a
  fraction of the cost. ``lgamma(x + 1)`` does not depend on the parameters and is computed without
  gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-8


def log_nb(x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Entry-wise NB log-probability. Shapes broadcast; returns the broadcast shape (nats)."""
    log_theta_mu = torch.log(theta + mu + eps)
    return (
        theta * (torch.log(theta + eps) - log_theta_mu)
        + x * (torch.log(mu + eps) - log_theta_mu)
        + torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1)
    )


def log_zinb(
    x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, pi_logits: torch.Tensor, eps: float = EPS
) -> torch.Tensor:
    """Entry-wise ZINB log-probability, with zero-inflation probability ``sigmoid(pi_logits)``."""
    nb_zero = theta * (torch.log(theta + eps) - torch.log(theta + mu + eps))  # log NB(0)
    case_zero = F.softplus(nb_zero - pi_logits) - F.softplus(-pi_logits)
    case_nonzero = -pi_logits - F.softplus(-pi_logits) + log_nb(x, mu, theta, eps)
    return torch.where(x < eps, case_zero, case_nonzero)


def log_poisson(x: torch.Tensor, rate: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Entry-wise Poisson log-probability."""
    return x * torch.log(rate + eps) - rate - torch.lgamma(x + 1)


def _nonzero_gamma_terms(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Per-cell sum of ``lgamma(x + theta) - lgamma(theta) - lgamma(x + 1)`` over the non-zero entries.

    x: (n_cells, n_genes); theta: broadcastable to x. Returns (n_cells,).
    """
    rows, cols = torch.nonzero(x, as_tuple=True)
    values = x[rows, cols]
    theta_nz = theta.expand_as(x)[rows, cols]
    with torch.no_grad():
        log_factorial = torch.lgamma(values + 1)
    terms = torch.lgamma(values + theta_nz) - torch.lgamma(theta_nz) - log_factorial
    return torch.zeros(x.shape[0], dtype=terms.dtype, device=x.device).index_add_(0, rows, terms)


def log_nb_sum(x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Per-cell NB log-likelihood summed over genes. x, mu: (n_cells, n_genes); returns (n_cells,)."""
    log_theta_mu = torch.log(theta + mu + eps)
    dense = theta * (torch.log(theta + eps) - log_theta_mu) + x * (torch.log(mu + eps) - log_theta_mu)
    return dense.sum(-1) + _nonzero_gamma_terms(x, theta)


def log_zinb_sum(
    x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, pi_logits: torch.Tensor, eps: float = EPS
) -> torch.Tensor:
    """Per-cell ZINB log-likelihood summed over genes. x, mu, pi_logits: (n_cells, n_genes)."""
    log_theta_mu = torch.log(theta + mu + eps)
    nb_zero = theta * (torch.log(theta + eps) - log_theta_mu)
    softplus_neg_pi = F.softplus(-pi_logits)
    case_zero = F.softplus(nb_zero - pi_logits) - softplus_neg_pi
    case_nonzero_dense = -pi_logits - softplus_neg_pi + nb_zero + x * (torch.log(mu + eps) - log_theta_mu)
    dense = torch.where(x > 0, case_nonzero_dense, case_zero)
    return dense.sum(-1) + _nonzero_gamma_terms(x, theta)


def log_poisson_sum(x: torch.Tensor, rate: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Per-cell Poisson log-likelihood summed over genes. Returns (n_cells,)."""
    rows, cols = torch.nonzero(x, as_tuple=True)
    with torch.no_grad():
        log_factorial = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device).index_add_(
            0, rows, torch.lgamma(x[rows, cols] + 1)
        )
    return (x * torch.log(rate + eps) - rate).sum(-1) - log_factorial


def sample_nb(mu: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Draw NB counts as a Gamma-Poisson mixture: lambda ~ Gamma(theta, theta / mu), x ~ Poisson(lambda)."""
    theta = theta.expand_as(mu)
    lam = torch.distributions.Gamma(concentration=theta, rate=theta / (mu + EPS)).sample()
    return torch.poisson(lam)


def sample_zinb(mu: torch.Tensor, theta: torch.Tensor, pi_logits: torch.Tensor) -> torch.Tensor:
    """Draw ZINB counts: NB draws set to zero with probability ``sigmoid(pi_logits)``."""
    dropped = torch.rand_like(mu) < torch.sigmoid(pi_logits)
    return sample_nb(mu, theta).masked_fill(dropped, 0.0)


def sample_poisson(rate: torch.Tensor) -> torch.Tensor:
    """Draw Poisson counts."""
    return torch.poisson(rate)
