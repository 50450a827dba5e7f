"""Per-cell count log-likelihoods whose mean is ``library x softmax(logits)``, as scVI's decoder gives it.

Training spends most of its element-wise time between the decoder's last linear layer and the loss:
softmax, multiplication by the library, the likelihood and the backward pass of each. Here they are one
autograd function. In the forward pass it evaluates the value and, in the same sweep, the gradients with
respect to the logits, the log library, ``log_theta`` and the zero-inflation logits. The backward pass
is then one multiplication per input.

Two ideas make this cheap:

* Zero counts (~90% of entries) need no special function: a dense sweep evaluates every entry as if its
  count were zero, and the non-zero entries are corrected afterwards with ``lgamma``/``digamma``.
* The chain rule through the softmax is closed-form. With ``mu = L * softmax(a)`` and
  ``h_g = mu_g * dlogp/dmu_g``, ``dlogp/da = h - softmax(a) * sum_g h_g`` and ``dlogp/dlog L = sum_g h_g``.
  ``h`` itself has no division by ``mu``, so tiny means are no trouble.

Shapes: ``x``, ``logits``, ``pi_logits`` (n_cells, n_genes); ``log_library`` (n_cells, 1);
``log_theta`` (1, n_genes) or (n_cells, n_genes). Results are (n_cells,) in nats.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .counts import log_factorial_sum, nonzero_entries, row_dot
from .special import lgamma_digamma


def _dense_pass(a, log_library, log_theta, pi_logits, with_grad: bool):
    """Every entry as if its count were zero.

    Returns the per-cell value (n_cells,), ``log_scale`` (n_cells, 1) with ``log mu = a + log_scale``, and
    with ``with_grad``: ``mu``, ``h`` (mu * dlogp/dmu), ``g_theta`` (dlogp/dtheta) and ``g_pi``, each
    (n_cells, n_genes) (``g_pi`` None without zero inflation). Purely element-wise plus row reductions, so
    it can be compiled into a few loops.
    """
    row_max = a.amax(1, keepdim=True)
    mu = torch.exp(a - row_max)
    log_total = torch.log(mu.sum(1, keepdim=True))
    log_scale = log_library - row_max - log_total
    mu = mu * torch.exp(log_library - log_total)  # library * softmax(a)
    theta = torch.exp(log_theta)
    theta_mu = theta + mu
    sp = torch.log(theta_mu) - log_theta  # log(1 + mu / theta); log NB(0) = -theta * sp
    nb0 = sp * -theta
    if pi_logits is None:
        value = nb0.sum(1)
        if not with_grad:
            return value, log_scale, None, None, None, None
        q = mu / theta_mu
        return value, log_scale, mu, q * -theta, q - sp, None
    p = torch.sigmoid(pi_logits)
    nb_part = torch.exp(nb0) * (1 - p)  # (1 - p) NB(0)
    zinb0 = p + nb_part
    value = torch.log(zinb0).sum(1)
    if not with_grad:
        return value, log_scale, None, None, None, None
    q = mu / theta_mu
    w = nb_part / zinb0  # posterior weight of the NB component of an observed zero
    return value, log_scale, mu, w * q * -theta, w * (q - sp), (1 - p) - w


def _nonzero_pass(xv, a, log_scale, log_theta, pi_logits, rows, cols, log_factorial, with_grad: bool):
    """The non-zero entries ``xv`` at (rows, cols): ``correction`` = log p(x) - log p(0) there (what to add to the
    dense pass's per-cell value), without ``-lgamma(x + 1)`` when ``log_factorial`` (its per-cell sum) is
    given, and with ``with_grad`` the true ``h``, ``g_theta`` and ``g_pi`` there, each a vector over the
    non-zeros (``g_pi`` None without zero inflation). ``lgamma``/``digamma`` come from
    :func:`~cellvi.distributions.special.lgamma_digamma`, which the compiler vectorises."""
    flat = rows * a.shape[1] + cols
    if log_theta.shape[0] == 1:  # per gene: the special functions of theta once per gene, then gathered
        lgamma_t, digamma_t = (f[cols] for f in lgamma_digamma(torch.exp(log_theta[0])))
        lt = log_theta[0][cols]
    else:
        lt = log_theta.reshape(-1)[flat]
        lgamma_t, digamma_t = lgamma_digamma(torch.exp(lt))
    t = torch.exp(lt)
    log_mu = a.reshape(-1)[flat] + log_scale.reshape(-1)[rows]
    mu = torch.exp(log_mu)
    theta_mu = t + mu
    log_theta_mu = torch.log(theta_mu)
    nb0 = t * (lt - log_theta_mu)  # log NB(0)
    xt = xv + t
    lgamma_xt, digamma_xt = lgamma_digamma(xt)
    gamma_terms = lgamma_xt - lgamma_t
    if log_factorial is None:
        gamma_terms = gamma_terms - lgamma_digamma(xv + 1)[0]
    log_nb = nb0 + xv * (log_mu - log_theta_mu) + gamma_terms
    if pi_logits is None:
        correction, g_pi = log_nb - nb0, None
    else:
        pi = pi_logits.reshape(-1)[flat]
        p = torch.sigmoid(pi)
        zinb0 = torch.log(p + torch.exp(nb0) * (1 - p))  # what the dense pass added here
        correction, g_pi = log_nb - F.softplus(pi) - zinb0, -p
    if not with_grad:
        return correction, None, None, None
    h = xv - xt * (mu / theta_mu)
    g_theta = 1 + (lt - log_theta_mu) - xt / theta_mu + (digamma_xt - digamma_t)
    return correction, h, g_theta, g_pi


def _forward_terms(xv, a, log_library, log_theta, pi_logits, rows, cols, log_factorial, with_grad: bool):
    """The forward pass: a dense pass as if every count were zero, then the non-zero entries corrected
    and written in place. Returns the per-cell value (n_cells,) and, with
    ``with_grad``, what the backward pass multiplies by the incoming gradient: ``g_a`` = dlogp/dlogits,
    ``h_sum`` (n_cells, 1) = dlogp/dlog_library, ``g_theta`` = dlogp/dtheta and ``g_pi``."""
    value, log_scale, mu, h, g_theta, g_pi = _dense_pass(a, log_library, log_theta, pi_logits, with_grad)
    correction, h_nz, g_theta_nz, g_pi_nz = _nonzero_pass(
        xv, a, log_scale, log_theta, pi_logits, rows, cols, log_factorial, with_grad
    )
    # swap log p(0) for log p(x) at the non-zeros. Written into a zero matrix and summed per row rather
    # than index_add-ed: each position is written once, so compiled code has no atomic adds (whose
    # order differs between runs) and the result is the same bits in every run.
    flat = rows * a.shape[1] + cols
    per_entry = torch.zeros_like(a).view(-1).index_put_((flat,), correction)
    value = value + per_entry.view_as(a).sum(1)
    if log_factorial is not None:
        value = value - log_factorial
    if not with_grad:
        return value, None, None, None, None
    h.view(-1).index_copy_(0, flat, h_nz)
    g_theta.view(-1).index_copy_(0, flat, g_theta_nz)
    if g_pi is not None:
        g_pi.view(-1).index_copy_(0, flat, g_pi_nz)
    h_sum = h.sum(1, keepdim=True)
    g_a = h.addcmul_(mu, h_sum * torch.exp(-log_library), value=-1)  # h - softmax * sum(h)
    return value, g_a, h_sum, g_theta, g_pi


class _SoftmaxCountLikelihood(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xv, a, log_library, log_theta, pi_logits, rows, cols, log_factorial):
        with_grad = any(ctx.needs_input_grad[1:5])
        log_theta = log_theta.expand(1, a.shape[1]) if log_theta.dim() == 1 else log_theta
        value, g_a, h_sum, g_theta, g_pi = _forward_terms(
            xv, a, log_library, log_theta, pi_logits, rows, cols, log_factorial, with_grad
        )
        if with_grad:
            ctx.save_for_backward(g_a, h_sum, g_theta, g_pi, log_theta)
        return value

    @staticmethod
    def backward(ctx, grad):
        g_a, h_sum, g_theta, g_pi, log_theta = ctx.saved_tensors
        g = grad.unsqueeze(1)
        if ctx.needs_input_grad[3]:
            if log_theta.shape[0] == 1:  # chain through theta = exp(log_theta)
                d_log_theta = (grad @ g_theta).unsqueeze(0) * torch.exp(log_theta)
            else:
                d_log_theta = g * g_theta * torch.exp(log_theta)
        else:
            d_log_theta = None
        return (
            None,
            g * g_a if ctx.needs_input_grad[1] else None,
            g * h_sum if ctx.needs_input_grad[2] else None,
            d_log_theta,
            g * g_pi if g_pi is not None and ctx.needs_input_grad[4] else None,
            None,
            None,
            None,
        )


def log_nb_sum_softmax(
    x: torch.Tensor,
    logits: torch.Tensor,
    log_library: torch.Tensor,
    log_theta: torch.Tensor,
    nonzero: tuple | None = None,
    log_factorial: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-cell NB log-likelihood with mean ``exp(log_library) * softmax(logits)`` and inverse dispersion
    ``exp(log_theta)``. ``nonzero``: optional (rows, cols) int64 coordinates of x's non-zeros, row-major
    as the loaders give them, or (rows, cols, values) with ``x=None`` (counts never densified). ``log_factorial``: optional (n_cells,) per-cell sum of ``lgamma(x + 1)``,
    which does not depend on the parameters (the loaders give it; else computed here). Returns (n_cells,)."""
    rows, cols, xv = nonzero_entries(x, nonzero)
    return _SoftmaxCountLikelihood.apply(xv, logits, log_library, log_theta, None, rows, cols, log_factorial)


def log_zinb_sum_softmax(
    x: torch.Tensor,
    logits: torch.Tensor,
    log_library: torch.Tensor,
    log_theta: torch.Tensor,
    pi_logits: torch.Tensor,
    nonzero: tuple | None = None,
    log_factorial: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-cell ZINB log-likelihood; as :func:`log_nb_sum_softmax` with zero-inflation logits
    ``pi_logits`` (n_cells, n_genes)."""
    rows, cols, xv = nonzero_entries(x, nonzero)
    return _SoftmaxCountLikelihood.apply(xv, logits, log_library, log_theta, pi_logits, rows, cols, log_factorial)


def log_poisson_sum_softmax(
    x: torch.Tensor | None,
    logits: torch.Tensor,
    log_library: torch.Tensor,
    log_factorial: torch.Tensor | None = None,
    nonzero: tuple | None = None,
) -> torch.Tensor:
    """Per-cell Poisson log-likelihood with rate ``exp(log_library) * softmax(logits)``. The rates of a cell
    sum to its library, so ``sum_g rate_g = exp(log_library)`` needs no pass over the genes.
    ``log_factorial`` and ``nonzero`` as for :func:`log_nb_sum_softmax`."""
    log_softmax = logits - torch.logsumexp(logits, 1, keepdim=True)
    library = log_library.reshape(-1)
    if x is None:  # counts as (rows, cols, values) only
        rows, cols, xv = nonzero_entries(None, nonzero)
        if log_factorial is None:
            log_factorial = torch.zeros_like(library).index_add_(0, rows, torch.lgamma(xv + 1))
        # sum_g x_g (log_softmax_g + log L) = x . log_softmax + sum(x) log L
        return row_dot(rows, cols, xv, log_softmax + log_library) - torch.exp(library) - log_factorial
    if log_factorial is None:
        log_factorial = log_factorial_sum(x)
    return (x * log_softmax).sum(1) + x.sum(1) * library - torch.exp(library) - log_factorial
