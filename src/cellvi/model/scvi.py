"""SCVI: the user-facing single-cell variational inference model with the scvi-tools API."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from ..data import Registry
from ..errors import InvalidParameterError
from ..module import VAE
from ..module.vae import DISPERSIONS, LATENT_DISTRIBUTIONS, LIKELIHOODS, NORM_PLACES
from ._expression import ExpressionMixin
from .base import BaseModel, _check_positive


class SCVI(ExpressionMixin, BaseModel):
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
    use_batch_norm, use_layer_norm
        Where to normalise hidden layers, as in scvi-tools: "both", "encoder", "decoder" or "none"
        (defaults "both" and "none"). The scArches tutorial's ``use_layer_norm="both",
        use_batch_norm="none"`` works.

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
        use_batch_norm: str = "both",
        use_layer_norm: str = "none",
    ) -> None:
        super().__init__(adata, **_hyperparameters(locals()))

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
            adata,
            layer,
            batch_key,
            labels_key,
            size_factor_key,
            list(categorical_covariate_keys or []),
            list(continuous_covariate_keys or []),
            cls._model_name,
            **cls._setup_split(),
        )
        registry.attach(adata)

    def _build_module(self, registry: Registry, **p) -> VAE:
        _check_vae_params(p)
        _check_norms(p)
        s = registry.summary
        return VAE(
            n_input=s["n_vars"],
            n_batch=s["n_batch"],
            n_labels=s["n_labels"],
            n_continuous_cov=s["n_continuous"],
            n_cats_per_cov=s["n_cats_per_cov"],
            library_log_means=s["library_log_means"],
            library_log_vars=s["library_log_vars"],
            **p,
        )

    # ------------------------------------------------------------------ query mapping (scArches)
    @staticmethod
    def prepare_query_anndata(
        adata,
        reference=None,
        return_reference_var_names: bool = False,
        inplace: bool = True,
        *,
        reference_model=None,
    ):
        """Give the query ``adata`` the reference's genes, in its order; missing genes are zeros (a
        warning says how many). reference (or scvi-tools' keyword ``reference_model``): a model, a saved
        model folder (cellvi's or scvi-tools') or archive. As in scvi-tools, ``adata`` is changed in
        place and None returned; ``inplace=False`` returns a new AnnData and leaves ``adata`` as it was.
        ``return_reference_var_names``: only return the reference's genes (a pandas Index)."""
        from .query import one_reference, prepare_query_anndata

        reference = one_reference(reference, reference_model)
        return prepare_query_anndata(adata, reference, return_reference_var_names, inplace)

    @classmethod
    def load_query_data(
        cls,
        adata,
        reference=None,
        freeze_expression: bool = True,
        freeze_decoder_first_layer: bool = True,
        freeze_batchnorm_encoder: bool = True,
        freeze_batchnorm_decoder: bool = False,
        freeze_dropout: bool = False,
        freeze_classifier: bool = True,
        unfrozen: bool = False,
        *,
        reference_model=None,
        inplace_subset_query_vars: bool = False,
        device: str | int = "auto",
        accelerator: str = "auto",
    ):
        """A model of the query ``adata`` built from a trained ``reference`` (a model, a saved folder or archive),
        to be trained on the query (scArches). The query needs the reference's genes (see
        :meth:`prepare_query_anndata`) and its setup columns (a missing SCANVI labels column is filled
        with the unlabeled category); new batches and categories get new weights, which are all that
        trains by default, so the reference cells' latent does not change. Options as scvi-tools:
        ``freeze_expression=False`` trains the encoder's first layer, ``freeze_decoder_first_layer=
        False`` the decoder's, ``freeze_batchnorm_*`` keep batch norms fixed (decoder's trains by
        default), ``freeze_dropout`` turns dropout off, ``freeze_classifier=False`` trains SCANVI's
        classifier, ``unfrozen`` trains everything. Training uses ``weight_decay=0`` by default (L2
        would move frozen weights). ``adata`` is set up in place (registry in ``adata.uns``).
        scvi-tools' keywords: ``reference_model`` (= ``reference``), ``inplace_subset_query_vars=True``
        (runs :meth:`prepare_query_anndata` in place first), ``device`` (then :meth:`to_device`) and
        ``accelerator`` ("auto", "cpu", "gpu"/"cuda").
        """
        from .query import load_query_data, one_reference

        reference = one_reference(reference, reference_model)
        if accelerator not in ("auto", "cpu", "gpu", "cuda"):
            raise InvalidParameterError(f"accelerator must be 'auto', 'cpu', 'gpu' or 'cuda', got {accelerator!r}.")
        if inplace_subset_query_vars:
            cls.prepare_query_anndata(adata, reference, inplace=True)
        model = load_query_data(
            cls,
            adata,
            reference,
            freeze_expression,
            freeze_decoder_first_layer,
            freeze_batchnorm_encoder,
            freeze_batchnorm_decoder,
            freeze_dropout,
            freeze_classifier,
            unfrozen,
        )
        if device != "auto" or accelerator != "auto":
            target = device if device != "auto" else ("cpu" if accelerator == "cpu" else "cuda")
            model.to_device(int(target) if isinstance(target, str) and target.isdigit() else target)
        return model

    def differential_expression(
        self,
        adata=None,
        groupby: str | None = None,
        group1=None,
        group2=None,
        idx1=None,
        idx2=None,
        mode: str = "vanilla",
        delta: float | None = 0.25,
        batch_size: int | None = None,
        all_stats: bool = True,
        batch_correction: bool = False,
        fdr_target: float = 0.05,
        silent: bool = True,
        n_samples: int = 5000,
        pseudocounts: float | None = None,
        test_mode: str = "three",
        n_samples_overall: int | None = None,
        mc_error: float | None = 0.01,
        weights: str | None = "uniform",
        filter_outlier_cells: bool = False,
        importance_weighting_kwargs: dict | None = None,
        batchid1=None,
        batchid2=None,
    ) -> pd.DataFrame:
        """Bayesian differential expression (Lopez et al. 2018 "vanilla"; Boyeau et al. 2019 "change").

        Groups: ``groupby`` (an ``adata.obs`` column) with ``group1`` (a group or list; None: each
        group in turn, one-vs-all) and ``group2`` (None: all other cells); or ``idx1``/``idx2``
        (boolean masks, integer positions or ``adata.obs.query`` strings; ``idx2=None``: the rest).
        Posterior samples of normalized expression (one per random cell; a group smaller than the
        number asked is re-sampled) are drawn in rounds, for every group at once, and shared by all
        comparisons (a group's "Rest" is the other groups' samples mixed by group size). A
        comparison stops when every gene with odds of at least 3 either way has a Monte-Carlo
        standard error of proba_de (vanilla: proba_m1) of at most ``mc_error`` (columns
        ``mc_error``, ``n_pairs``), or after ``n_samples`` pairs; ``mc_error=None``: always
        ``n_samples``. Memory: one round (about 512 MB at most), whatever the number of cells.
        See docs/differential_expression.md.
        batch_correction: decode every sampled cell in every batch and average (as
        :meth:`get_batch_corrected_expression`) instead of in its own batch.
        mode "vanilla": columns proba_m1 = P(h1 > h2), proba_m2, bayes_factor (natural log), sorted by
        bayes_factor. mode "change": log2 fold change per sample pair; proba_de = ``P(|lfc| > delta)``
        (``test_mode`` "three": the larger of up and down; "two": their sum), proba_not_de,
        bayes_factor, pseudocounts, delta (None: estimated from the LFC distribution), lfc_mean,
        lfc_median, lfc_std, lfc_min, lfc_max and ``is_de_fdr_<fdr_target>`` (posterior expected FDR
        control); sorted by proba_de. Both: scale1, scale2 (mean normalized expression) and, with
        ``all_stats``, raw_mean1/2, non_zeros_proportion1/2, raw_normalized_mean1/2 (counts per
        10,000) over all cells of each group. With ``groupby``: comparison, group1, group2 columns.
        ``silent`` is accepted for compatibility; ``n_samples_overall`` is an alias of ``n_samples``.
        ``weights``: "uniform" (every sampled cell counts the same; the default) or "importance"
        (scvi-tools' importance weighting: each group's samples are resampled in proportion to how well
        their latent code explains the group's cells, see docs/differential_expression.md; not with
        ``batch_correction``); ``importance_weighting_kwargs``: ``max_cells`` (anchor cells per
        group, 1024), ``truncation`` (False), ``n_mc_samples`` (500, for log p(x) of the anchors).
        ``filter_outlier_cells``: leave out of the sampling the cells that are outliers of their
        group's latent representation (robust Gaussian envelope, as scvi-tools).
        Returns one DataFrame indexed by gene, comparisons stacked.
        """
        from ._de import DERequest, differential_expression

        if batchid1 is not None or batchid2 is not None:  # scvi-tools' keywords, not offered: say so
            raise InvalidParameterError(
                "batchid1/batchid2 are not supported: with batch_correction=True cellvi decodes both groups' "
                "cells in every batch of the model and averages."
            )
        request = DERequest(
            groupby=groupby,
            group1=group1,
            group2=group2,
            idx1=idx1,
            idx2=idx2,
            mode=mode,
            delta=delta,
            batch_size=batch_size,
            all_stats=all_stats,
            batch_correction=batch_correction,
            fdr_target=fdr_target,
            n_samples=n_samples if n_samples_overall is None else n_samples_overall,
            pseudocounts=pseudocounts,
            test_mode=test_mode,
            mc_error=mc_error,
            weights=weights,
            filter_outlier_cells=filter_outlier_cells,
            importance_weighting_kwargs=importance_weighting_kwargs,
        )
        return differential_expression(self, adata, request)


def _hyperparameters(init_locals: dict) -> dict:
    """The keyword arguments of a model's ``__init__``, from its ``locals()`` at the start."""
    return {k: v for k, v in init_locals.items() if k not in ("self", "adata", "__class__")}


def _check_norms(p: dict) -> None:
    for name in ("use_batch_norm", "use_layer_norm"):
        if name in p and not isinstance(p[name], bool):
            _check_choice(name, p[name], NORM_PLACES)


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise InvalidParameterError(f"{name} must be one of {list(choices)}, got {value!r}.")


def _check_vae_params(p: dict) -> None:
    """Check the hyper-parameters SCVI's module shares with its variants (raises InvalidParameterError)."""
    _check_choice("dispersion", p["dispersion"], DISPERSIONS)
    _check_choice("gene_likelihood", p["gene_likelihood"], LIKELIHOODS)
    _check_choice("latent_distribution", p["latent_distribution"], LATENT_DISTRIBUTIONS)
    for name in ("n_hidden", "n_latent", "n_layers"):
        _check_positive(name, p[name])
    if not 0 <= p["dropout_rate"] < 1:
        raise InvalidParameterError(f"dropout_rate must be in [0, 1), got {p['dropout_rate']}.")
