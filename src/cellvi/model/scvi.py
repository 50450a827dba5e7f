"""SCVI: the user-facing single-cell variational inference model with the scvi-tools API."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from ..data import Registry
from ..errors import InvalidParameterError, MissingKeyError
from ..module import VAE
from ..module.vae import DISPERSIONS, LATENT_DISTRIBUTIONS, LIKELIHOODS
from .base import BaseModel, _check_positive


class SCVI(BaseModel):
    """Single-cell variational inference (Lopez et al. 2018) on raw counts.

    Parameters
    ----------
    adata
        AnnData prepared with :meth:`SCVI.setup_anndata`.
    n_hidden, n_latent, n_layers
        Width of hidden layers, dimension of the latent space, depth of encoder and decoder.
    dropout_rate
        Dropout in the encoder.
    dispersion
        Inverse dispersion ``theta`` per gene ("gene"), per gene and batch ("gene-batch"), per gene and
        label ("gene-label") or per gene and cell ("gene-cell", from the decoder).
    gene_likelihood
        "zinb" (zero-inflated negative binomial), "nb" or "poisson".
    latent_distribution
        "normal", or "ln" (logistic normal: softmax of a Gaussian).
    use_observed_lib_size
        Use each cell's total count as its library size (True), or infer it as a latent variable with a
        per-batch log-normal prior (False).
    encode_covariates
        Also give the covariates to the encoder.
    deeply_inject_covariates
        Give covariates to every hidden layer, not only the first.

    Examples
    --------
    >>> import cellvi as scvi
    >>> scvi.model.SCVI.setup_anndata(adata, batch_key="batch")
    >>> model = scvi.model.SCVI(adata)
    >>> model.train()
    >>> latent = model.get_latent_representation(adata)  # also stored in adata.obsm["X_scvi"]
    """

    _model_name = "SCVI"
    _latent_key = "X_scvi"

    def __init__(
        self,
        adata,
        n_hidden: int = 128,
        n_latent: int = 10,
        n_layers: int = 1,
        dropout_rate: float = 0.1,
        dispersion: str = "gene",
        gene_likelihood: str = "zinb",
        latent_distribution: str = "normal",
        use_observed_lib_size: bool = True,
        encode_covariates: bool = False,
        deeply_inject_covariates: bool = True,
    ) -> None:
        super().__init__(
            adata, n_hidden=n_hidden, n_latent=n_latent, n_layers=n_layers, dropout_rate=dropout_rate,
            dispersion=dispersion, gene_likelihood=gene_likelihood, latent_distribution=latent_distribution,
            use_observed_lib_size=use_observed_lib_size, encode_covariates=encode_covariates,
            deeply_inject_covariates=deeply_inject_covariates,
        )

    @classmethod
    def setup_anndata(
        cls,
        adata,
        layer: str | None = None,
        batch_key: str | None = None,
        labels_key: str | None = None,
        size_factor_key: str | None = None,
        categorical_covariate_keys: Sequence[str] | None = None,
        continuous_covariate_keys: Sequence[str] | None = None,
    ) -> None:
        """Check ``adata`` and record how to read it (stored in ``adata.uns["_cellvi_registry"]``).

        layer: where the raw counts are (default ``adata.X``); non-negative integers (any numeric dtype,
        dense, sparse or backed). batch_key, labels_key, categorical_covariate_keys: ``adata.obs`` columns
        of categories (no missing values). continuous_covariate_keys: numeric ``adata.obs`` columns.
        size_factor_key: a positive ``adata.obs`` column used as library size instead of total counts.
        Raises a :class:`cellvi.errors.CellviError` naming the problem; ``adata`` is changed only on success.
        """
        registry = Registry.from_anndata(
            adata, layer, batch_key, labels_key, size_factor_key,
            list(categorical_covariate_keys or []), list(continuous_covariate_keys or []), cls._model_name,
        )
        registry.attach(adata)

    def _build_module(self, registry: Registry, **p) -> VAE:
        _check_choice("dispersion", p["dispersion"], DISPERSIONS)
        _check_choice("gene_likelihood", p["gene_likelihood"], LIKELIHOODS)
        _check_choice("latent_distribution", p["latent_distribution"], LATENT_DISTRIBUTIONS)
        for name in ("n_hidden", "n_latent", "n_layers"):
            _check_positive(name, p[name])
        if not 0 <= p["dropout_rate"] < 1:
            raise InvalidParameterError(f"dropout_rate must be in [0, 1), got {p['dropout_rate']}.")
        s = registry.summary
        return VAE(
            n_input=s["n_vars"], n_batch=s["n_batch"], n_labels=s["n_labels"],
            n_continuous_cov=s["n_continuous"], n_cats_per_cov=s["n_cats_per_cov"],
            library_log_means=s["library_log_means"], library_log_vars=s["library_log_vars"], **p,
        )

    # ------------------------------------------------------------------ expression outputs
    def _batch_codes(self, transform_batch) -> list[int | None]:
        if transform_batch is None:
            return [None]
        names = transform_batch if isinstance(transform_batch, (list, tuple)) else [transform_batch]
        known = self.registry.categories["batch"]
        codes = []
        for name in names:
            if str(name) not in known:
                raise MissingKeyError(f"transform_batch {name!r} is not a batch of the model; batches: {known}.")
            codes.append(known.index(str(name)))
        return codes

    def _gene_mask(self, gene_list) -> np.ndarray:
        if gene_list is None:
            return np.arange(len(self.registry.var_names))
        pos = {g: i for i, g in enumerate(self.registry.var_names)}
        unknown = [g for g in gene_list if g not in pos]
        if unknown:
            raise MissingKeyError(f"Genes not in the model: {unknown[:5]}.")
        return np.array([pos[g] for g in gene_list])

    def get_normalized_expression(
        self,
        adata=None,
        indices=None,
        transform_batch=None,
        gene_list: Sequence[str] | None = None,
        library_size: float | str = 1,
        n_samples: int = 1,
        batch_size: int | None = None,
        return_mean: bool = True,
        return_numpy: bool = False,
    ) -> pd.DataFrame | np.ndarray:
        """Denoised expression, (n_cells, n_genes): the decoder's expected expression per cell.

        library_size: a number (default 1: proportions that sum to 1 per cell; 1e4 gives counts per
        10,000) or "latent" (expected counts at each cell's own library size).
        transform_batch: None decodes each cell in its own batch (not batch-corrected). A batch name
        decodes every cell as if measured in that batch; a list of batch names averages over them.
        **For batch-corrected expression** use :meth:`get_batch_corrected_expression` (all batches
        averaged) or pass ``transform_batch=<reference batch>``.
        n_samples: posterior samples of z averaged (``return_mean``) or returned as
        (n_samples, n_cells, n_genes). Computed minibatch by minibatch into one float32 result.
        Returns a DataFrame (cells x genes) unless ``return_numpy``.
        """
        _check_positive("n_samples", n_samples)
        latent_library = library_size == "latent"
        if not latent_library and not (isinstance(library_size, (int, float)) and library_size > 0):
            raise InvalidParameterError(f"library_size must be a positive number or 'latent', got {library_size!r}.")
        codes = self._batch_codes(transform_batch)
        genes = self._gene_mask(gene_list)
        n = self._n_cells(adata, indices)
        shape = (n, len(genes)) if return_mean else (n_samples, n, len(genes))
        out = np.zeros(shape, dtype=np.float32)
        pos = 0
        for batch in self._batches(adata, indices, batch_size):
            b = len(batch["X"])
            acc = torch.zeros((n_samples, b, len(genes)), device=self.device)
            for s in range(n_samples):
                for code in codes:
                    expr = self.module.expression(batch, code, latent_library, sample_z=n_samples > 1)
                    acc[s] += expr[:, genes] / len(codes)
            if not latent_library:
                acc *= float(library_size)
            if return_mean:
                out[pos : pos + b] = acc.mean(0).cpu().numpy()
            else:
                out[:, pos : pos + b] = acc.cpu().numpy()
            pos += b
        if return_numpy or not return_mean:
            return out
        obs_names = (self.adata if adata is None else adata).obs_names
        if indices is not None:
            obs_names = obs_names[np.asarray(indices)]
        return pd.DataFrame(out, index=obs_names, columns=np.asarray(self.registry.var_names)[genes], copy=False)

    def get_batch_corrected_expression(self, adata=None, indices=None, **kwargs) -> pd.DataFrame | np.ndarray:
        """Batch-corrected denoised expression: every cell decoded in every batch, averaged. Same
        arguments as :meth:`get_normalized_expression` (except ``transform_batch``)."""
        return self.get_normalized_expression(
            adata, indices, transform_batch=list(self.registry.categories["batch"]), **kwargs
        )

    def posterior_predictive_sample(
        self, adata=None, indices=None, n_samples: int = 1, gene_list=None, batch_size: int | None = None
    ) -> np.ndarray:
        """Counts drawn from the posterior predictive, float32 (n_cells, n_genes), or
        (n_cells, n_genes, n_samples) when ``n_samples > 1``."""
        _check_positive("n_samples", n_samples)
        genes = self._gene_mask(gene_list)
        parts = []
        for batch in self._batches(adata, indices, batch_size):
            draws = [self.module.sample_counts(batch)[:, genes].cpu().numpy() for _ in range(n_samples)]
            parts.append(np.stack(draws, axis=-1) if n_samples > 1 else draws[0])
        return np.concatenate(parts).astype(np.float32)

    def get_likelihood_parameters(
        self, adata=None, indices=None, n_samples: int = 1, give_mean: bool = False, batch_size: int | None = None
    ) -> dict[str, np.ndarray]:
        """Parameters of p(x | z) per cell and gene: ``mean`` (expected counts), ``dispersions`` (theta)
        and, for zinb, ``dropout`` (zero-inflation logits); each (n_cells, n_genes). With
        ``n_samples > 1`` they are computed at posterior samples of z, averaged if ``give_mean``, else
        stacked as (n_samples, n_cells, n_genes)."""
        _check_positive("n_samples", n_samples)
        parts: dict[str, list] = {}
        for batch in self._batches(adata, indices, batch_size):
            draws = [self.module.likelihood_parameters(batch, sample_z=n_samples > 1) for _ in range(n_samples)]
            for key in draws[0]:
                stacked = torch.stack([d[key] for d in draws]).cpu().numpy()
                parts.setdefault(key, []).append(stacked)
        out = {k: np.concatenate(v, axis=1) for k, v in parts.items()}
        if n_samples == 1 or give_mean:
            out = {k: v.mean(0) for k, v in out.items()}
        return out


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise InvalidParameterError(f"{name} must be one of {list(choices)}, got {value!r}.")
