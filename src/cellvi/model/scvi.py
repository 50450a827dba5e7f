"""SCVI: the user-facing single-cell variational inference model with the scvi-tools API."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from ..data import Registry
from ..errors import InvalidParameterError, MissingKeyError
from ..module import VAE
from ..module.vae import DISPERSIONS, LATENT_DISTRIBUTIONS, LIKELIHOODS, NORM_PLACES
from ..train import distributed
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
        super().__init__(
            adata,
            n_hidden=n_hidden,
            n_latent=n_latent,
            n_layers=n_layers,
            dropout_rate=dropout_rate,
            dispersion=dispersion,
            gene_likelihood=gene_likelihood,
            latent_distribution=latent_distribution,
            use_observed_lib_size=use_observed_lib_size,
            encode_covariates=encode_covariates,
            deeply_inject_covariates=deeply_inject_covariates,
            use_batch_norm=use_batch_norm,
            use_layer_norm=use_layer_norm,
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
    def prepare_query_anndata(adata, reference, return_reference_var_names: bool = False, inplace: bool = True):
        """Give the query ``adata`` the reference's genes, in its order; missing genes are zeros (a
        warning says how many). reference: a model, a saved model folder (cellvi's or scvi-tools') or archive.
        As in scvi-tools, ``adata`` is changed in place and None returned; ``inplace=False`` returns a
        new AnnData and leaves ``adata`` as it was. ``return_reference_var_names``: only return the
        reference's genes (a pandas Index)."""
        from .query import prepare_query_anndata

        return prepare_query_anndata(adata, reference, return_reference_var_names, inplace)

    @classmethod
    def load_query_data(
        cls,
        adata,
        reference,
        freeze_expression: bool = True,
        freeze_decoder_first_layer: bool = True,
        freeze_batchnorm_encoder: bool = True,
        freeze_batchnorm_decoder: bool = False,
        freeze_dropout: bool = False,
        freeze_classifier: bool = True,
        unfrozen: bool = False,
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
        """
        from .query import load_query_data

        return load_query_data(
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

    # ------------------------------------------------------------------ expression outputs
    def _batch_codes(self, transform_batch) -> list[int | None]:
        if transform_batch is None:
            return [None]
        names = transform_batch if isinstance(transform_batch, (list, tuple)) else [transform_batch]
        known = self.registry.categories["batch"]
        codes: list[int | None] = []
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
        genes = self._gene_mask(gene_list)
        mine = self._my_cells(adata, indices)
        if mine is not None:  # under torchrun: each rank its share, then all of them, in order, on every rank
            with distributed.local():
                local = self.get_normalized_expression(
                    adata, mine, transform_batch, gene_list, library_size, n_samples, batch_size, return_mean, True
                )
            out = distributed.gather_rows(local, axis=0 if return_mean else 1)
            return self._expression_frame(out, adata, indices, genes, return_mean, return_numpy)
        n = self._n_cells(adata, indices)
        # torch's allocator, not numpy's: numpy asks the kernel for huge pages, whose first allocation
        # in a process stalled for 40-90 ms on a 40 MB result here (page compaction)
        out = torch.empty((n, len(genes)) if return_mean else (n_samples, n, len(genes))).numpy()
        blocks = self._normalized_blocks(
            adata, indices, transform_batch, genes, library_size, n_samples, batch_size, return_mean, out
        )
        for _ in blocks:  # each block is written into its rows of out
            pass
        return self._expression_frame(out, adata, indices, genes, return_mean, return_numpy)

    def _expression_frame(self, out, adata, indices, genes, return_mean, return_numpy):
        if return_numpy or not return_mean:
            return out
        obs_names = (self.adata if adata is None else adata).obs_names
        if indices is not None:
            obs_names = obs_names[np.asarray(indices)]
        return pd.DataFrame(out, index=obs_names, columns=np.asarray(self.registry.var_names)[genes], copy=False)

    def _normalized_blocks(
        self, adata, indices, transform_batch, genes, library_size, n_samples, batch_size, return_mean, out=None
    ) -> Iterator[np.ndarray]:
        """Normalized expression minibatch by minibatch, in cell order: float32 (b, len(genes)), or
        (n_samples, b, len(genes)) unless ``return_mean`` (see :meth:`get_normalized_expression`).
        ``out``: the whole result (float32 numpy); when given, every block is written into its rows of
        ``out`` (computed there directly in the common case) and those rows are what is yielded."""
        _check_positive("n_samples", n_samples)
        latent_library = library_size == "latent"
        if not latent_library and not (isinstance(library_size, (int, float)) and library_size > 0):
            raise InvalidParameterError(f"library_size must be a positive number or 'latent', got {library_size!r}.")
        codes = self._batch_codes(transform_batch)
        all_genes = len(genes) == self.module.n_input and bool(np.all(genes == np.arange(len(genes))))
        direct = n_samples == 1 and len(codes) == 1 and all_genes  # the common case: one decoding, all genes

        def decode(batch, rows) -> np.ndarray:
            n_cells = len(batch["batch"])
            if direct:
                on_cpu = rows is not None and self.device.type == "cpu"
                target = torch.from_numpy(rows).view(n_cells, -1) if on_cpu else None
                expr = self.module.expression(batch, codes[0], latent_library, out=target)
                if not latent_library and library_size != 1:
                    expr *= float(library_size)
                if on_cpu:
                    return rows
                return expr.cpu().numpy() if return_mean else expr[None].cpu().numpy()
            acc = torch.zeros((n_samples, n_cells, len(genes)), device=self.device)
            for s in range(n_samples):
                for code in codes:
                    expr = self.module.expression(batch, code, latent_library, sample_z=n_samples > 1)
                    acc[s] += expr[:, genes] / len(codes)
            if not latent_library:
                acc *= float(library_size)
            return (acc.mean(0) if return_mean else acc).cpu().numpy()

        def blocks():  # a generator inside, so that the checks above run at the call
            pos = 0
            for batch in self._batches(adata, indices, batch_size, sparse_counts=True):
                b = len(batch["batch"])
                rows = None if out is None else out[..., pos : pos + b, :]
                pos += b
                block = decode(batch, rows)
                if rows is not None and block is not rows:
                    rows[...] = block
                yield block

        return blocks()

    def write_normalized_expression(
        self,
        path,
        layer: str = "scvi_normalized",
        adata=None,
        indices=None,
        transform_batch=None,
        library_size: float | str = 1,
        n_samples: int = 1,
        batch_size: int | None = None,
        overwrite: bool = False,
    ) -> str:
        """Write :meth:`get_normalized_expression` (mean over ``n_samples``) to ``layers[layer]`` of the
        .h5ad ``path``, minibatch by minibatch, never holding all cells in memory (for backed or zarr
        data too). ``path`` is created (obs of the cells, the model's genes, no X) or, if it exists
        (for example from :meth:`write_latent`), must hold the same cells; it cannot be the input file.
        Returns ``path``. The layer is dense float32 (n_cells x n_genes x 4 bytes on disk)."""
        genes = self._gene_mask(None)
        mine = self._my_cells(adata, indices)  # under torchrun: each rank its share, rank 0 writes
        blocks = self._normalized_blocks(
            adata, indices if mine is None else mine, transform_batch, genes, library_size, n_samples, batch_size, True
        )
        return self._write_rows(path, "layers", layer, blocks, len(genes), adata, indices, overwrite)

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
        and, for zinb, ``dropout`` (zero-inflation probabilities, as in scvi-tools); each (n_cells, n_genes). With
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
        from ._de import differential_expression

        return differential_expression(
            self,
            adata,
            groupby,
            group1,
            group2,
            idx1,
            idx2,
            mode,
            delta,
            batch_size,
            all_stats,
            batch_correction,
            fdr_target,
            n_samples if n_samples_overall is None else n_samples_overall,
            pseudocounts,
            test_mode,
            mc_error,
            weights,
            filter_outlier_cells,
            importance_weighting_kwargs,
        )


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
