"""LinearSCVI (LDVAE, Svensson et al. 2020): scVI with a linear decoder, whose loadings say which genes
each latent factor drives. Same data set-up, training, outputs, saving and query mapping as SCVI."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..data import Registry
from ..errors import InvalidParameterError
from ..module import LDVAE
from ..nn.linear_decoder import LOADINGS
from .scvi import SCVI, _check_choice, _check_vae_params, _hyperparameters


class LinearSCVI(SCVI):
    """scVI with a non-linear encoder and a linear decoder from the latent to the genes' log-rates.

    The decoder's log-rate of gene ``g`` in cell ``n`` is
    ``W[g] . z[n] + b[g] + B[batch_n, g] + (other categorical covariates' rows) + C[g] . cont[n]``,
    then a softmax over genes times the library. The batch (and every covariate) adds a per-gene
    offset to the log-rate and leaves the loadings ``W`` alone: a factor's loadings are the same in
    every batch, and :meth:`get_loadings` returns ``W`` (genes x factors). Unlike scvi-tools,
    ``categorical_covariate_keys`` / ``continuous_covariate_keys`` are accepted and query mapping
    (:meth:`load_query_data`) works: a new batch learns its own offsets while ``W`` stays fixed.
    The parameters below come in addition to :class:`SCVI`'s.

    Parameters
    ----------
    loadings
        "nonneg" (default: ``W = softplus(V) >= 0``, so that a factor's programme is its largest
        loadings; chosen by the measurement in docs/linear_decoder.md) or "free" (any sign, as
        scvi-tools).
    l1_loadings
        L1 penalty on ``W`` added to the per-cell loss (default 0).
    gene_likelihood
        Default "nb" (as scvi-tools' LinearSCVI).
    """

    _model_name = "LinearSCVI"
    _latent_key = "X_linear_scvi"
    module: LDVAE

    def __init__(
        self,
        adata,
        n_hidden: int = 128,
        n_latent: int = 10,
        n_layers: int = 1,
        dropout_rate: float = 0.1,
        dispersion: str = "gene",
        gene_likelihood: str = "nb",
        latent_distribution: str = "normal",
        use_observed_lib_size: bool = True,
        encode_covariates: bool = False,
        deeply_inject_covariates: bool = True,
        loadings: str = "nonneg",
        l1_loadings: float = 0.0,
    ) -> None:
        super(SCVI, self).__init__(adata, **_hyperparameters(locals()))

    def _build_module(self, registry: Registry, **p) -> LDVAE:
        _check_choice("loadings", p["loadings"], LOADINGS)
        if not (isinstance(p["l1_loadings"], (int, float)) and p["l1_loadings"] >= 0):
            raise InvalidParameterError(f"l1_loadings must be a number >= 0, got {p['l1_loadings']!r}.")
        _check_vae_params(p)
        s = registry.summary
        return LDVAE(
            n_input=s["n_vars"],
            n_batch=s["n_batch"],
            n_labels=s["n_labels"],
            n_continuous_cov=s["n_continuous"],
            n_cats_per_cov=s["n_cats_per_cov"],
            library_log_means=s["library_log_means"],
            library_log_vars=s["library_log_vars"],
            **p,
        )

    def get_loadings(self) -> pd.DataFrame:
        """The decoder's loadings ``W``: a DataFrame genes x factors (columns ``Z_0``, ``Z_1``, ...),
        float32. ``W[g, k]`` is the change of gene ``g``'s log-rate per unit of factor ``k`` (before the
        softmax over genes, which only subtracts a per-cell constant). Batch and covariate offsets are
        not part of it."""
        w = self.module.loadings().cpu().numpy().astype(np.float32)
        return pd.DataFrame(w, index=list(self.registry.var_names), columns=[f"Z_{k}" for k in range(w.shape[1])])
