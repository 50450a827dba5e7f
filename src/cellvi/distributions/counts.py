"""Count likelihoods: negative binomial (NB), zero-inflated NB (ZINB) and Poisson, in log space.

Parameterisation (as in scVI): ``mu`` is the mean (> 0), ``theta`` the inverse dispersion (> 0; variance
``mu + mu**2 / theta``), ``pi_logits`` the logit of the zero-inflation probability.

Two flavours of each log-likelihood (see also :mod:`.softmax_counts`):

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


def _gather_theta(theta: torch.Tensor, like: torch.Tensor, rows, cols, fn) -> torch.Tensor:
    """``fn(theta)`` at the non-zero positions of an array shaped as ``like`` (n_cells, n_genes); per-gene
    theta (1, n_genes) is transformed once per gene."""
    if theta.dim() == 2 and theta.shape[0] == 1:
        return fn(theta[0])[cols]
    return fn(theta.expand_as(like)[rows, cols])


def nonzero_entries(x: torch.Tensor | None, nonzero: tuple | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, cols, values) of the non-zero counts: ``nonzero`` as the loaders give it, either (rows, cols)
    of the dense ``x`` or (rows, cols, values) when the counts never became dense (``x`` then None); found
    in ``x`` when ``nonzero`` is None. rows, cols int64 (row-major order); values as ``x``."""
    if nonzero is not None and len(nonzero) == 3:
        return nonzero[0], nonzero[1], nonzero[2]
    if x is None:
        raise ValueError("Counts given neither dense (x) nor as (rows, cols, values) non-zeros.")
    rows, cols = torch.nonzero(x, as_tuple=True) if nonzero is None else nonzero
    return rows, cols, x.reshape(-1)[rows * x.shape[1] + cols]  # a flat gather: cheaper than x[rows, cols]


def _zero_case(mu: torch.Tensor, theta: torch.Tensor, pi_logits: torch.Tensor | None, eps: float):
    """Every entry evaluated as if its count were zero, with the gradients of that value.

    Returns the per-cell sum (n_cells,) of log p(0) and its gradients with respect to mu, theta and
    pi_logits, each (n_cells, n_genes) (``None`` for pi without zero inflation).
    """
    tm = theta + mu + eps
    inv_tm = 1.0 / tm
    r = torch.log(theta + eps) - torch.log(tm)  # log(theta / (theta + mu))
    nb0 = theta * r  # log NB(0)
    if pi_logits is None:
        return nb0.sum(-1), -theta * inv_tm, r + mu * inv_tm, None
    neg_pi = -pi_logits
    d0 = nb0 + neg_pi
    value = F.softplus(d0) - F.softplus(neg_pi)  # log ZINB(0)
    w = torch.sigmoid(d0)  # posterior weight of the NB component of a zero
    return value.sum(-1), -w * theta * inv_tm, w * (r + mu * inv_tm), torch.sigmoid(neg_pi) - w


def _zero_case_value(mu, theta, pi_logits, eps: float) -> torch.Tensor:
    """Per-cell sum of log p(0) over all entries, without gradients (n_cells,)."""
    nb0 = theta * (torch.log(theta + eps) - torch.log(theta + mu + eps))
    if pi_logits is None:
        return nb0.sum(-1)
    return (F.softplus(nb0 - pi_logits) - F.softplus(-pi_logits)).sum(-1)


class _CountLikelihoodSum(torch.autograd.Function):
    """Per-cell NB or ZINB log-likelihood with analytic gradients, computed sparsely.

    Zero entries need no special function: one dense pass evaluates every entry as if it were zero
    (:func:`_zero_case`), and the non-zero entries (~10%) are corrected with ``lgamma``/``digamma``.
    The gradients with respect to ``mu``, ``theta`` and ``pi_logits`` are formed in the same pass, so
    backward is a multiplication.
    """

    @staticmethod
    def forward(ctx, x, mu, theta, pi_logits, eps, nonzero, log_factorial):
        rows, cols, xv = nonzero_entries(x, nonzero)
        flat = rows * mu.shape[1] + cols  # one flat gather is cheaper than 2-d advanced indexing
        mu_nz = mu.reshape(-1)[flat]
        t_nz = theta.expand_as(mu)[rows, cols] if theta.shape[0] != 1 else theta[0][cols]
        tm_nz = t_nz + mu_nz + eps
        r_nz = torch.log(t_nz + eps) - torch.log(tm_nz)
        lgamma_terms = torch.lgamma(xv + t_nz) - _gather_theta(theta, mu, rows, cols, torch.lgamma)
        if log_factorial is None:
            lgamma_terms = lgamma_terms - torch.lgamma(xv + 1)
        nb_nz = t_nz * r_nz + xv * (torch.log(mu_nz + eps) - torch.log(tm_nz)) + lgamma_terms
        needs_grad = any(ctx.needs_input_grad[1:4])
        if needs_grad:
            zero_sum, grad_mu, grad_t, grad_pi = _zero_case(mu, theta, pi_logits, eps)
        else:  # evaluation: the value alone
            zero_sum = _zero_case_value(mu, theta, pi_logits, eps)
        # log p(0) at the non-zero entries, to swap for log p(x)
        nb0_nz = t_nz * r_nz
        if pi_logits is None:
            correction = nb_nz - nb0_nz
        else:
            neg_pi_nz = -pi_logits.reshape(-1)[flat]
            zero_nz = F.softplus(nb0_nz + neg_pi_nz) - F.softplus(neg_pi_nz)
            correction = nb_nz + neg_pi_nz - F.softplus(neg_pi_nz) - zero_nz
        value = zero_sum.index_add(0, rows, correction)
        if log_factorial is not None:
            value = value - log_factorial

        if needs_grad:
            dg = torch.digamma(xv + t_nz) - _gather_theta(theta, mu, rows, cols, torch.digamma)
            grad_mu = grad_mu.contiguous()
            grad_mu.view(-1)[flat] = xv / (mu_nz + eps) - (xv + t_nz) / tm_nz
            grad_t = grad_t.expand_as(mu).contiguous()
            grad_t.view(-1)[flat] = r_nz + 1 - (xv + t_nz) / tm_nz + dg
            if grad_pi is not None:
                grad_pi = grad_pi.contiguous()
                grad_pi.view(-1)[flat] = -torch.sigmoid(-neg_pi_nz)
            ctx.save_for_backward(grad_mu, grad_t, grad_pi)
            ctx.theta_shape = theta.shape
        return value

    @staticmethod
    def backward(ctx, grad_out):
        grad_mu, grad_t, grad_pi = ctx.saved_tensors
        g = grad_out.unsqueeze(-1)
        d_theta = (g * grad_t).sum_to_size(ctx.theta_shape)
        return None, g * grad_mu, d_theta, (g * grad_pi if grad_pi is not None else None), None, None, None


def log_nb_sum(
    x: torch.Tensor,
    mu: torch.Tensor,
    theta: torch.Tensor,
    eps: float = EPS,
    nonzero: tuple | None = None,
    log_factorial: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-cell NB log-likelihood summed over genes. x, mu: (n_cells, n_genes); theta: (1 or n_cells,
    n_genes). ``nonzero``: optional (rows, cols) int64 coordinates of the non-zero entries of x, as the
    loaders provide them (else found here), or (rows, cols, values) with ``x=None`` (never densified). ``log_factorial``: optional (n_cells,) per-cell sum of
    ``lgamma(x + 1)``, also from the loaders (else computed here). Returns (n_cells,)."""
    return _CountLikelihoodSum.apply(x, mu, theta, None, eps, nonzero, log_factorial)


def log_zinb_sum(
    x: torch.Tensor,
    mu: torch.Tensor,
    theta: torch.Tensor,
    pi_logits: torch.Tensor,
    eps: float = EPS,
    nonzero: tuple | None = None,
    log_factorial: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-cell ZINB log-likelihood summed over genes. x, mu, pi_logits: (n_cells, n_genes); see
    :func:`log_nb_sum` for ``nonzero`` and ``log_factorial``."""
    return _CountLikelihoodSum.apply(x, mu, theta, pi_logits, eps, nonzero, log_factorial)


def log_poisson_sum(
    x: torch.Tensor | None,
    rate: torch.Tensor,
    eps: float = EPS,
    log_factorial: torch.Tensor | None = None,
    nonzero: tuple | None = None,
) -> torch.Tensor:
    """Per-cell Poisson log-likelihood summed over genes (``log_factorial`` as for :func:`log_nb_sum`;
    ``nonzero`` (rows, cols, values) with ``x=None`` for counts that were never densified).
    Returns (n_cells,)."""
    if x is None:
        rows, cols, xv = nonzero_entries(None, nonzero)
        if log_factorial is None:
            log_factorial = torch.zeros_like(rate[:, 0]).index_add_(0, rows, torch.lgamma(xv + 1))
        return row_dot(rows, cols, xv, torch.log(rate + eps)) - rate.sum(-1) - log_factorial
    if log_factorial is None:
        log_factorial = log_factorial_sum(x)
    return (x * torch.log(rate + eps) - rate).sum(-1) - log_factorial


def row_dot(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """Per-row sum of ``values * dense[rows, cols]``: ``(x * dense).sum(1)`` for a sparse ``x``, (n_rows,).
    Each product is written once into a zero matrix that is then summed by row, not index_add-ed: compiled
    code would add with atomics, in an order (so bits) that differs between runs."""
    flat = rows * dense.shape[1] + cols
    per_entry = torch.zeros_like(dense).view(-1).index_put_((flat,), values * dense.reshape(-1)[flat])
    return per_entry.view_as(dense).sum(1)


@torch.no_grad()
def log_factorial_sum(x: torch.Tensor) -> torch.Tensor:
    """Per-cell sum of ``lgamma(x + 1)`` over the non-zero counts (the rest are 0), (n_cells,); no gradient."""
    rows, cols = torch.nonzero(x, as_tuple=True)
    return torch.zeros(x.shape[0], dtype=x.dtype, device=x.device).index_add_(0, rows, torch.lgamma(x[rows, cols] + 1))


def sample_gamma_rate(mu: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """The Gamma part of the NB's Gamma-Poisson mixture: lambda ~ Gamma(theta, theta / mu), mean ``mu``
    (a denoised sample: no counting noise). Same shape as ``mu``."""
    theta = theta.expand_as(mu)
    return torch.distributions.Gamma(concentration=theta, rate=theta / (mu + EPS)).sample()


def sample_nb(mu: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Draw NB counts as a Gamma-Poisson mixture: lambda ~ Gamma(theta, theta / mu), x ~ Poisson(lambda)."""
    return torch.poisson(sample_gamma_rate(mu, theta))


def sample_zinb(mu: torch.Tensor, theta: torch.Tensor, pi_logits: torch.Tensor) -> torch.Tensor:
    """Draw ZINB counts: NB draws set to zero with probability ``sigmoid(pi_logits)``."""
    dropped = torch.rand_like(mu) < torch.sigmoid(pi_logits)
    return sample_nb(mu, theta).masked_fill(dropped, 0.0)


def sample_poisson(rate: torch.Tensor) -> torch.Tensor:
    """Draw Poisson counts."""
    return torch.poisson(rate)
