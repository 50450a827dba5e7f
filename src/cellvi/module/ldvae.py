"""LDVAE: scVI with a linear decoder (Svensson et al. 2020). The encoder stays non-linear; the decoder
maps the latent linearly to the genes' log-rates (see :mod:`cellvi.nn.linear_decoder`), so each
latent factor has one loading per gene. Never sees AnnData.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..nn import LinearDecoder
from .vae import VAE


class LDVAE(VAE):
    """:class:`VAE` with a :class:`~cellvi.nn.LinearDecoder`. Extra hyper-parameters:

    loadings
        "free" (any sign) or "nonneg" (``W = softplus(V)``).
    l1_loadings
        Weight of an L1 penalty ``l1_loadings * sum |W|`` added to the per-cell loss (0: none); pushes
        each gene onto few factors.
    """

    def __init__(
        self,
        n_input: int,
        n_batch: int = 1,
        n_labels: int = 1,
        n_continuous_cov: int = 0,
        n_cats_per_cov: Sequence[int] = (),
        loadings: str = "free",
        l1_loadings: float = 0.0,
        **vae_kwargs,
    ) -> None:
        super().__init__(
            n_input, n_batch, n_labels, n_continuous_cov=n_continuous_cov, n_cats_per_cov=n_cats_per_cov, **vae_kwargs
        )
        self.l1_loadings = float(l1_loadings)
        self.decoder = LinearDecoder(
            self.n_latent,
            n_input,
            [n_batch, *n_cats_per_cov],
            n_continuous_cov,
            need_r=self.dispersion == "gene-cell",
            need_dropout=self.gene_likelihood == "zinb",
            loadings=loadings,
        )

    def loss(self, batch: dict, kl_weight: float = 1.0) -> dict:
        out = super().loss(batch, kl_weight)
        if self.l1_loadings > 0 and self.training:
            out["loss"] = out["loss"] + self.l1_loadings * self.decoder.loadings().abs().sum()
        return out

    @torch.no_grad()
    def loadings(self) -> torch.Tensor:
        """(n_genes, n_latent) loadings."""
        return self.decoder.loadings().detach()
