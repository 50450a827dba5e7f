"""SCANVI: scVI with semi-supervised cell-type annotation (label transfer), with the scvi-tools API."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from .._settings import settings
from ..data import Registry
from ..errors import InvalidDataError, InvalidParameterError, MissingKeyError, RegistryMismatchError
from ..module import SCANVAE
from ..module.vae import DISPERSIONS, LIKELIHOODS
from . import _unknown
from ._confidence import ConfidenceMixin
from .base import _check_positive
from .scvi import SCVI, _check_choice, _check_norms, _hyperparameters


class SCANVI(ConfidenceMixin, SCVI):
    """Single-cell annotation using variational inference (Xu et al. 2021).

    Cells whose label is ``unlabeled_category`` (see :meth:`setup_anndata`) are unlabelled; every other
    label present in the data is a class. The unlabeled category is never a class and a category with
    no labelled cell is never predicted.

    Parameters
    ----------
    adata
        AnnData prepared with :meth:`SCANVI.setup_anndata`.
    n_hidden, n_latent, n_layers, dropout_rate, dispersion
        As for :class:`~cellvi.model.SCVI` (the latent is Gaussian).
    gene_likelihood, use_observed_lib_size, encode_covariates, deeply_inject_covariates
        As for :class:`~cellvi.model.SCVI`.
    linear_classifier
        Classify with a linear map of the latent instead of an MLP.
    classifier_parameters
        ``n_hidden``, ``n_layers``, ``dropout_rate`` of the classifier MLP.
    y_prior
        Prior class probabilities, in the order of :attr:`classes_` (default uniform).
    use_batch_norm, use_layer_norm
        As for :class:`~cellvi.model.SCVI`.

    Examples
    --------
    >>> scvi.model.SCANVI.setup_anndata(adata, labels_key="cell_type", unlabeled_category="Unknown",
    ...                                 batch_key="batch")
    >>> model = scvi.model.SCANVI(adata)
    >>> model.train()
    >>> adata.obs["predicted"] = model.predict()
    """

    _model_name = "SCANVI"
    _latent_key = "X_scanvi"
    module: SCANVAE

    def __init__(
        self,
        adata,
        n_hidden: int = 128,
        n_latent: int = 10,
        n_layers: int = 1,
        dropout_rate: float = 0.1,
        dispersion: str = "gene",
        gene_likelihood: str = "zinb",
        use_observed_lib_size: bool = True,
        encode_covariates: bool = False,
        deeply_inject_covariates: bool = True,
        linear_classifier: bool = False,
        classifier_parameters: dict | None = None,
        y_prior: Sequence[float] | None = None,
        use_batch_norm: str = "both",
        use_layer_norm: str = "none",
    ) -> None:
        y_prior = None if y_prior is None else [float(p) for p in y_prior]
        super(SCVI, self).__init__(adata, **_hyperparameters(locals()))
        self.was_pretrained = False

    @classmethod
    def setup_anndata(
        cls,
        adata,
        labels_key: str,
        unlabeled_category: str,
        layer: str | None = None,
        batch_key: str | None = None,
        size_factor_key: str | None = None,
        categorical_covariate_keys: Sequence[str] | None = None,
        continuous_covariate_keys: Sequence[str] | None = None,
    ) -> None:
        """As :meth:`SCVI.setup_anndata`, with ``labels_key`` (the ``adata.obs`` column of labels) and
        ``unlabeled_category`` (its value for cells without a label). Needs at least one labelled cell."""
        if labels_key is None:
            raise MissingKeyError("SCANVI needs labels_key: the adata.obs column with the cell labels.")
        unlabeled = str(unlabeled_category)
        registry = Registry.from_anndata(
            adata,
            layer,
            batch_key,
            labels_key,
            size_factor_key,
            list(categorical_covariate_keys or []),
            list(continuous_covariate_keys or []),
            cls._model_name,
            extra_args={"unlabeled_category": unlabeled},
            **cls._setup_split(),
        )
        # classes: the labels present in the data, minus the unlabeled category, which gets the last code
        classes = [c for c in registry.categories["labels"] if c != unlabeled]
        if not classes:
            raise InvalidDataError(
                f"Every cell of adata.obs[{labels_key!r}] is {unlabeled!r}: SCANVI needs some labelled cells."
            )
        registry.categories["labels"] = classes + [unlabeled]
        registry.summary["n_labels"] = len(classes)
        registry.attach(adata)

    @property
    def classes_(self) -> list[str]:
        """The class names, in the order of the classifier's outputs."""
        return list(self.registry.categories["labels"][:-1])

    def _build_module(self, registry: Registry, **p) -> SCANVAE:
        _check_choice("dispersion", p["dispersion"], DISPERSIONS)
        _check_choice("gene_likelihood", p["gene_likelihood"], LIKELIHOODS)
        _check_norms(p)
        for name in ("n_hidden", "n_latent", "n_layers"):
            _check_positive(name, p[name])
        if not 0 <= p["dropout_rate"] < 1:
            raise InvalidParameterError(f"dropout_rate must be in [0, 1), got {p['dropout_rate']}.")
        s = registry.summary
        n_classes = len(registry.categories["labels"]) - 1
        if p.get("y_prior") is not None and len(p["y_prior"]) != n_classes:
            raise InvalidParameterError(f"y_prior needs one probability per class ({n_classes}).")
        return SCANVAE(
            n_input=s["n_vars"],
            n_labels=n_classes,
            n_batch=s["n_batch"],
            n_continuous_cov=s["n_continuous"],
            n_cats_per_cov=s["n_cats_per_cov"],
            library_log_means=s["library_log_means"],
            library_log_vars=s["library_log_vars"],
            **p,
        )

    @classmethod
    def from_scvi_model(
        cls, scvi_model: SCVI, unlabeled_category: str, labels_key: str | None = None, adata=None, **scanvi_kwargs
    ) -> SCANVI:
        """A SCANVI initialised with the weights of a trained :class:`SCVI` (its hyper-parameters too).

        labels_key: default the SCVI's. adata: default the SCVI's; it is set up for SCANVI with the
        SCVI's other setup arguments. scanvi_kwargs: SCANVI-only options (``linear_classifier``...).
        Train it afterwards (by default for few epochs, as it starts from a trained model).
        """
        if type(scvi_model) is not SCVI:
            raise InvalidParameterError("from_scvi_model needs a cellvi.model.SCVI model.")
        if not scvi_model.is_trained:
            raise InvalidParameterError("The SCVI model has not been trained yet: call scvi_model.train() first.")
        params = dict(scvi_model.init_params)
        if params.pop("latent_distribution", "normal") != "normal":
            raise InvalidParameterError("SCANVI needs an SCVI with latent_distribution='normal'.")
        for key in list(scanvi_kwargs):
            if key in params:
                raise InvalidParameterError(f"{key!r} is fixed by the SCVI model ({params[key]!r}); do not pass it.")
        adata = scvi_model.adata if adata is None else adata
        args = dict(scvi_model.registry.setup_args)
        labels_key = labels_key or args.pop("labels_key", None)
        args.pop("labels_key", None)
        if labels_key is None:
            raise MissingKeyError("Pass labels_key: the SCVI model was set up without labels.")
        scvi_model.registry.check_genes(adata)
        cls.setup_anndata(adata, labels_key, unlabeled_category, **args)
        registry = Registry.of(adata)
        for name in ["batch", *scvi_model.registry.extra_categorical_keys]:
            if registry.categories[name] != scvi_model.registry.categories[name]:
                raise RegistryMismatchError(
                    f"The {name} categories of adata differ from the SCVI model's; use the SCVI's AnnData."
                )
        model = cls(adata, **params, **scanvi_kwargs)
        own = model.module.state_dict()
        weights = {k: v for k, v in scvi_model.module.state_dict().items() if k in own and v.shape == own[k].shape}
        model.module.load_state_dict(weights, strict=False)
        model.was_pretrained = True
        return model

    # ------------------------------------------------------------------ training
    def train(
        self,
        max_epochs: int | None = None,
        n_samples_per_label: int | None = None,
        plan_kwargs: dict | None = None,
        **kwargs,
    ) -> SCANVI:
        """Train on labelled and unlabelled cells. Arguments as :meth:`SCVI.train`, plus:

        max_epochs: default as SCVI, or, for a model from :meth:`from_scvi_model`, a third of that
        clipped to [2, 10]. n_samples_per_label: balance the classes in the classification loss as if
        each had at most this many labelled cells (rarer classes count fully, larger ones less).
        plan_kwargs may hold ``classification_ratio`` (default 50), the weight of the classification
        loss against the bound (per cell), and ``labels_in_bound`` (default True: a labelled cell's bound
        uses its observed label; False: y is averaged under the classifier for every cell, as in
        scvi-tools 1.4.2; the scIB totals of the two agree, bench/results/scanvi_bound.md).
        """
        if kwargs.get("schedule", "scvi-tools") != "scvi-tools":
            raise InvalidParameterError(
                "SCANVI trains with scvi-tools' schedule only (schedule='fast' is measured for SCVI); set "
                "max_epochs and plan_kwargs yourself for a shorter run."
            )
        if max_epochs is None:
            max_epochs = int(min(400, max(1, round(400 * 20000 / self.adata.n_obs))))
            if getattr(self, "was_pretrained", False):
                max_epochs = int(min(10, max(2, round(max_epochs / 3.0))))
        plan = dict(plan_kwargs or {})
        ratio = float(plan.pop("classification_ratio", 50.0))
        labels_in_bound = bool(plan.pop("labels_in_bound", True))
        if ratio < 0:
            raise InvalidParameterError(f"classification_ratio must be >= 0, got {ratio}.")
        weights = None
        if n_samples_per_label is not None:
            _check_positive("n_samples_per_label", n_samples_per_label)
            n_classes = len(self.classes_)
            counts = np.bincount(self._cell_data().labels, minlength=n_classes + 1)[:n_classes]
            weights = torch.as_tensor(
                np.minimum(1.0, n_samples_per_label / np.maximum(counts, 1)), dtype=torch.float32, device=self.device
            )
        super().train(
            max_epochs=max_epochs,
            plan_kwargs=plan,
            loss_kwargs={"classification_ratio": ratio, "class_weights": weights, "labels_in_bound": labels_in_bound},
            **kwargs,
        )
        return self

    # ------------------------------------------------------------------ outputs
    @torch.no_grad()
    def predict(
        self,
        adata=None,
        indices=None,
        soft: bool = False,
        batch_size: int | None = None,
        use_posterior_mean: bool = True,
        ig_interpretability: bool = False,
        ig_args: dict | None = None,
        keep_observed: bool = False,
        unknown_threshold: float | str | None = None,
    ) -> np.ndarray | pd.DataFrame:
        """Label of each cell: an array of class names (n_cells,), or with ``soft`` a DataFrame (cells x
        classes) of class probabilities from the classifier, at the posterior mean of the latent (or one
        sample with ``use_posterior_mean=False``).

        As in scvi-tools, every cell gets the classifier's prediction, labelled ones too. After
        :meth:`calibrate` the probabilities are temperature-scaled (the labels are the same).
        keep_observed=True (a cellvi extra): a labelled cell keeps its observed label (probability 1 with
        ``soft``) instead. The data's labels are never changed.

        ig_interpretability: also return, as scvi-tools does, a table of integrated-gradients attributions
        of each cell's predicted-class logit to each gene's counts (baseline: zero counts; ``ig_args``:
        ``{"n_steps": 50}``), one row per gene ranked by the mean over cells (``feature``,
        ``feature_idx``, ``modality``, ``attribution_mean``, ``attribution_std``, ``cells``): the
        result is ``(labels_or_probabilities, table)``. Unlike scvi-tools, no captum is needed.

        unknown_threshold (a cellvi extra, hard labels only): ``"auto"`` marks ``"unknown"`` the cells
        whose :meth:`unknown_score` exceeds the threshold fitted by :meth:`calibrate` on the reference; a
        number uses that threshold instead; None (default, as scvi-tools) marks none.
        """
        if ig_interpretability:
            from . import _ig

            result = self.predict(
                adata,
                indices,
                soft=soft,
                batch_size=batch_size,
                use_posterior_mean=use_posterior_mean,
                keep_observed=keep_observed,
                unknown_threshold=unknown_threshold,
            )
            attrs = _ig.attributions(self, adata, indices, batch_size, ig_args)
            return result, _ig.ranked_features(self, attrs)
        if unknown_threshold is not None and soft:
            raise InvalidParameterError(
                "unknown_threshold applies to hard labels; with soft=True call unknown_score() for the scores."
            )
        temperature = self._temperature()
        parts = [
            torch.softmax(self.module.classify(b, sample=not use_posterior_mean) / temperature, dim=-1).cpu().numpy()
            for b in self._batches(adata, indices, batch_size)
        ]
        n_classes = len(self.classes_)
        probs = np.concatenate(parts) if parts else np.zeros((0, n_classes), dtype=np.float32)
        observed = np.zeros(len(probs), dtype=bool)
        if keep_observed:
            labels = self._cell_data(adata).labels
            labels = labels if indices is None else labels[np.asarray(indices)]
            observed = labels < n_classes
            probs[observed] = np.eye(n_classes, dtype=probs.dtype)[labels[observed]]
        if not soft:
            labels = np.asarray(self.classes_, dtype=object)[probs.argmax(1)]
            if unknown_threshold is not None:  # an observed label is never replaced
                threshold = _unknown.threshold_of(self._detector(), unknown_threshold)
                unknown = self.unknown_score(adata, indices, batch_size=batch_size) > threshold
                labels[unknown & ~observed] = _unknown.UNKNOWN_LABEL
            return labels
        obs_names = (self.adata if adata is None else adata).obs_names
        if indices is not None:
            obs_names = obs_names[np.asarray(indices)]
        return pd.DataFrame(probs, index=obs_names, columns=self.classes_)

    def get_ranked_features(self, adata=None, attrs: np.ndarray | None = None) -> pd.DataFrame:
        """scvi-tools' ranking of an attribution matrix ``attrs`` (n_cells, n_genes), e.g. from
        :meth:`shap_predict` summed over classes: one row per gene (``feature``, ``feature_idx``,
        ``modality``, ``attribution_mean``, ``attribution_std``, ``cells``) by decreasing mean over the
        cells. ``predict(ig_interpretability=True)`` returns this table for its integrated gradients.
        ``adata`` is accepted for scvi-tools' signature; the gene names are the model's."""
        from . import _ig

        if attrs is None:
            raise InvalidParameterError("get_ranked_features needs attrs, an (n_cells, n_genes) attribution matrix.")
        attrs = np.asarray(attrs)
        if attrs.ndim != 2 or attrs.shape[1] != len(self.registry.var_names):
            raise InvalidParameterError(
                f"attrs must be (n_cells, {len(self.registry.var_names)}) (one column per gene of the model), "
                f"got shape {attrs.shape}."
            )
        return _ig.ranked_features(self, attrs)

    def shap_predict(
        self, adata=None, indices=None, shap_args: dict | None = None, background_size: int | None = None
    ) -> np.ndarray:
        """SHAP values of the soft predictions (:meth:`predict` with ``soft=True``) per gene, as
        scvi-tools' ``shap_predict``: ``shap.KernelExplainer`` with the model's reference cells as the
        background; an array (n_cells, n_genes, n_classes) (the ``shap`` library's layout). For each
        cell and class, the values plus the mean prediction over the background sum to the cell's
        probability. ``shap_args``: passed to the explainer (``link``, ``feature_names``,
        ``keep_index``) and to ``shap_values`` (the rest, e.g. ``{"nsamples": 200}``).
        background_size (a cellvi extra): use that many random reference cells (seeded by
        ``cellvi.settings.seed``) as the background instead of all; KernelExplainer's cost grows with
        it. Needs the optional ``shap`` library: ``pip install 'cellvi[interpret]'``."""
        from . import _shap

        return _shap.shap_values(self, adata, indices, shap_args, background_size, settings.seed or 0)
