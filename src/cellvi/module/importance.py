"""Importance weights of posterior samples for differential expression (``weights="importance"``,
the method of scvi-tools' ``get_importance_weights``, Boyeau et al.).

A group's posterior is the mixture ``p(z | group) = 1/A sum_a p(z | x_a)`` over its cells (its
*anchors*: at most ``max_cells`` random cells of the group). Uniform sampling draws ``z`` from the
encoder's mixture ``1/A sum_a q(z | x_a)`` instead; a sample's importance weight corrects for the
difference, up to a constant:

    log w(z) = log p(z) + logsumexp_a [log p(x_a | z) - log p(x_a)] - logsumexp_a log q(z | x_a)

``log p(x_a | z)`` decodes ``z`` with the covariates of the cell it was drawn from, at the anchor's
observed library size; ``log p(x_a)`` is the importance-sampled marginal likelihood. Samples from
latent codes that explain no cell of the group well get a small weight. The prior is standard normal,
so only ``latent_distribution="normal"`` is supported. Nothing here sees an AnnData.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..distributions.gaussian import log_normal_density

CHUNK_ELEMENTS = 4_000_000  # (samples x anchors, genes) entries evaluated at once


@dataclass
class Anchors:
    """A group's anchor cells: counts ``x`` (A, n_genes), observed ``log_library`` (A, 1), the
    posterior ``qz_m``, ``qz_v`` (A, n_latent) and ``log_px`` (A,) the marginal log-likelihood (nats)."""

    x: torch.Tensor
    log_library: torch.Tensor
    qz_m: torch.Tensor
    qz_v: torch.Tensor
    log_px: torch.Tensor


@torch.no_grad()
def anchors(module, batches, n_mc_samples: int) -> Anchors:
    """The :class:`Anchors` of the cells of ``batches`` (minibatches with dense ``X``)."""
    parts: dict[str, list] = {k: [] for k in ("x", "log_library", "qz_m", "qz_v", "log_px")}
    for batch in batches:
        inf = module.inference(batch, sample=False)
        parts["x"].append(batch["X"])
        parts["log_library"].append(torch.log(batch["X"].sum(1, keepdim=True).clamp_min(1.0)))
        parts["qz_m"].append(inf["qz_m"])
        parts["qz_v"].append(inf["qz_v"])
        parts["log_px"].append(module.marginal_ll(batch, n_mc_samples))
    return Anchors(**{k: torch.cat(v) for k, v in parts.items()})


def _per_pair(t: torch.Tensor | None, n: int, sel: slice, n_anchor: int) -> torch.Tensor | None:
    """Rows ``sel`` of a per-cell (n, n_genes) tensor, each repeated for every anchor; a tensor
    shared by all cells (no cell axis) as it is."""
    if t is None or t.dim() < 2 or t.shape[0] != n:
        return t
    return t[sel].repeat_interleave(n_anchor, 0)


@torch.no_grad()
def scales_and_log_weights(module, batch: dict, anchor: Anchors, out: torch.Tensor) -> torch.Tensor:
    """One posterior sample z per cell of ``batch``: its normalized expression is written to ``out``
    (float32 (n_cells, n_genes)) and its unnormalised log importance weight (n_cells,) is returned
    (see the module docstring; normalise with :func:`cellvi.analysis.differential.importance_weights`)."""
    if module.latent_distribution != "normal":
        raise ValueError("importance weights assume a standard normal prior (latent_distribution='normal')")
    inf = module.inference(batch, sample=True)
    z = inf["z"]
    gen = module.generative(z, inf["library"], batch)
    torch.softmax(gen["scale_logits"], dim=-1, out=out)
    n, n_anchor = z.shape[0], anchor.x.shape[0]
    log_pz = log_normal_density(z, torch.zeros_like(z), torch.ones_like(z))  # (n,)
    log_qz = log_normal_density(z[:, None, :], anchor.qz_m[None], anchor.qz_v[None])  # (n, A)
    log_px_z = torch.empty((n, n_anchor), device=z.device)
    step = max(1, CHUNK_ELEMENTS // (n_anchor * anchor.x.shape[1]))
    for start in range(0, n, step):
        sel = slice(start, min(start + step, n))
        k = sel.stop - sel.start
        one = {
            "scale_logits": _per_pair(gen["scale_logits"], n, sel, n_anchor),
            "library": anchor.log_library.repeat(k, 1),
            "log_theta": _per_pair(gen["log_theta"], n, sel, n_anchor),
            "dropout_logits": _per_pair(gen["dropout_logits"], n, sel, n_anchor),
        }
        log_px_z[sel] = module.log_likelihood(anchor.x.repeat(k, 1), one).reshape(k, n_anchor)
    return log_pz + torch.logsumexp(log_px_z - anchor.log_px[None], dim=1) - torch.logsumexp(log_qz, dim=1)
