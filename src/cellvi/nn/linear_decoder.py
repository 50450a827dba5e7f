"""A linear decoder (LDVAE, Svensson et al. 2020): the latent maps linearly to the genes' log-rates.

Per cell ``n`` and gene ``g`` the decoder's output, before the softmax over genes, is::

    eta[n, g] = sum_k W[g, k] * z[n, k]  +  b[g]  +  B[s_n, g]  +  sum_j C[g, j] * c[n, j]

``W`` (n_genes, n_latent) are the loadings, ``b`` a per-gene baseline, ``B`` one row per category of
every categorical covariate (batch first) and ``C`` the effects of the continuous covariates ``c``.
The covariates only shift a gene's log-rate: they never change the loadings, so a factor means the
same in every batch. ``rho = softmax(eta)`` and the mean count is ``library * rho``. Loadings can be
constrained non-negative (``W = softplus(V)``), so that a factor's genes are its largest loadings.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import CovariateInjection, float32

LOADINGS = ("free", "nonneg")


class LinearLayer(nn.Module):
    """``eta = W z + b + covariates`` with the attributes query surgery expects (``linears``,
    ``injections``, :meth:`extend_categories`), like a one-layer :class:`~cellvi.nn.FCLayers` without
    the non-linearity. ``loadings="nonneg"`` applies ``softplus`` to the stored weight."""

    def __init__(
        self,
        n_in: int,
        n_out: int,
        n_cats_per_cov: Sequence[int] = (),
        n_continuous: int = 0,
        loadings: str = "free",
    ) -> None:
        super().__init__()
        if loadings not in LOADINGS:
            raise ValueError(f"loadings must be one of {LOADINGS}, got {loadings!r}")
        self.loadings = loadings
        linear = nn.Linear(n_in, n_out)
        if loadings == "nonneg":  # softplus(-2) ~ 0.13: small positive loadings to start from
            nn.init.normal_(linear.weight, -2.0, 0.5)
        self.linears = nn.ModuleList([linear])
        bound = 1.0 / (n_in + sum(n_cats_per_cov) + n_continuous) ** 0.5
        self.injections = nn.ModuleList([CovariateInjection(n_out, n_cats_per_cov, n_continuous, bound)])

    def weight(self) -> torch.Tensor:
        """The effective loadings ``W``, (n_out, n_in)."""
        w = self.linears[0].weight
        return F.softplus(w) if self.loadings == "nonneg" else w

    def forward(self, z: torch.Tensor, cat_codes=None, cont=None) -> torch.Tensor:
        """z: (n_cells, n_in) -> (n_cells, n_out)."""
        return F.linear(z, self.weight(), self.linears[0].bias) + self.injections[0](cat_codes, cont)

    def extend_categories(self, n_new_per_cov: Sequence[int], freeze_existing: bool) -> None:
        """New rows for new categories (query mapping); see :meth:`CovariateInjection.extend`."""
        if len(self.injections[0].tables):
            self.injections[0].extend(n_new_per_cov, freeze_existing)


class LinearDecoder(nn.Module):
    """Same interface as :class:`~cellvi.nn.Decoder`: ``forward(z, codes, cont)`` returns
    ``(scale_logits, r, dropout_logits)``, each (n_cells, n_genes), where ``scale_logits`` is linear in
    ``z`` (see the module docstring). ``r`` (gene-cell dispersion) and the zero-inflation logits are
    linear in ``z`` too, without covariates.
    """

    def __init__(
        self,
        n_input: int,
        n_output: int,
        n_cats_per_cov: Sequence[int] = (),
        n_continuous: int = 0,
        need_r: bool = False,
        need_dropout: bool = True,
        loadings: str = "free",
    ) -> None:
        super().__init__()
        self.decoder = LinearLayer(n_input, n_output, n_cats_per_cov, n_continuous, loadings)
        self.r_head = nn.Linear(n_input, n_output) if need_r else None
        self.dropout_head = nn.Linear(n_input, n_output) if need_dropout else None

    def forward(self, z, cat_codes=None, cont=None):
        r = float32(self.r_head(z)) if self.r_head is not None else None
        dropout_logits = float32(self.dropout_head(z)) if self.dropout_head is not None else None
        return float32(self.decoder(z, cat_codes, cont)), r, dropout_logits

    def scale_logits(self, z, cat_codes=None, cont=None) -> torch.Tensor:
        return float32(self.decoder(z, cat_codes, cont))

    def loadings(self) -> torch.Tensor:
        """The loadings ``W``, (n_genes, n_latent): d log-rate / d z, up to the softmax's per-cell constant."""
        return self.decoder.weight()
