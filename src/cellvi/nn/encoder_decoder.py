"""Encoder (cells -> latent posterior) and decoder (latent -> count distribution parameters) of scVI."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .layers import FCLayers, float32


class Encoder(nn.Module):
    """Maps an input to a diagonal Gaussian ``q(z | x)`` and a sample from it.

    With ``distribution="ln"`` the sample is passed through a softmax (logistic-normal latent).
    ``forward`` returns ``(mean, var, z)``, each (n_cells, n_output).
    """

    def __init__(
        self,
        n_input: int,
        n_output: int,
        n_cats_per_cov: Sequence[int] = (),
        n_continuous: int = 0,
        n_layers: int = 1,
        n_hidden: int = 128,
        dropout_rate: float = 0.1,
        distribution: str = "normal",
        inject_covariates: bool = True,
        var_eps: float = 1e-4,
        use_batch_norm: bool = True,
        use_layer_norm: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = FCLayers(
            n_input,
            n_hidden,
            n_cats_per_cov,
            n_continuous,
            n_layers,
            n_hidden,
            dropout_rate,
            inject_covariates,
            use_batch_norm,
            use_layer_norm,
        )
        self.mean = nn.Linear(n_hidden, n_output)
        self.log_var = nn.Linear(n_hidden, n_output)
        self.distribution = distribution
        self.var_eps = var_eps

    def forward(self, x, cat_codes=None, cont=None, sample: bool = True):
        h = self.encoder(x, cat_codes, cont)
        mean = self.mean(h).float()  # float32 also under bf16 autocast: the KL and sampling stay exact
        var = torch.exp(self.log_var(h).float()) + self.var_eps
        z = mean + var.sqrt() * torch.randn_like(mean) if sample else mean
        return mean, var, self.transform(z)

    def transform(self, z: torch.Tensor) -> torch.Tensor:
        """The latent as used downstream: identity for "normal", softmax for "ln"."""
        return torch.softmax(z, dim=-1) if self.distribution == "ln" else z


class Decoder(nn.Module):
    """Maps latent ``z`` (and covariates) to per-gene expression proportions and likelihood parameters.

    ``forward`` returns ``(scale_logits, r, dropout_logits)``, each (n_cells, n_genes):
    ``softmax(scale_logits)`` is the expression proportion of each gene (the softmax is left to the
    likelihood, which fuses it, see :mod:`cellvi.distributions.softmax_counts`), ``r`` the log inverse dispersion per cell and gene (only used for dispersion="gene-cell"),
    ``dropout_logits`` the zero-inflation logits. The outputs are float32 also when the layers run in
    bfloat16 under autocast (``train(precision="bf16-mixed")``): the likelihood is always taken in float32.
    """

    def __init__(
        self,
        n_input: int,
        n_output: int,
        n_cats_per_cov: Sequence[int] = (),
        n_continuous: int = 0,
        n_layers: int = 1,
        n_hidden: int = 128,
        inject_covariates: bool = True,
        use_batch_norm: bool = True,
        use_layer_norm: bool = False,
        need_r: bool = False,
        need_dropout: bool = True,
    ) -> None:
        super().__init__()
        self.decoder = FCLayers(
            n_input,
            n_hidden,
            n_cats_per_cov,
            n_continuous,
            n_layers,
            n_hidden,
            0.0,
            inject_covariates,
            use_batch_norm,
            use_layer_norm,
        )
        self.scale_head = nn.Linear(n_hidden, n_output)
        self.r_head = nn.Linear(n_hidden, n_output) if need_r else None
        self.dropout_head = nn.Linear(n_hidden, n_output) if need_dropout else None

    def forward(self, z, cat_codes=None, cont=None):
        h = self.decoder(z, cat_codes, cont)
        r = float32(self.r_head(h)) if self.r_head is not None else None
        dropout_logits = float32(self.dropout_head(h)) if self.dropout_head is not None else None
        return float32(self.scale_head(h)), r, dropout_logits

    def scale_logits(self, z, cat_codes=None, cont=None) -> torch.Tensor:
        """The first output of :meth:`forward` alone (n_cells, n_genes), without the other heads' work."""
        return float32(self.scale_head(self.decoder(z, cat_codes, cont)))
