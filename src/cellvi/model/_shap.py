"""``SCANVI.shap_predict``: SHAP values (Lundberg & Lee 2017) of the classifier's soft predictions per
gene, with the ``shap`` library's model-agnostic ``KernelExplainer``, as scvi-tools does. ``shap`` is an
optional extra (``pip install 'cellvi[interpret]'``)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from ..data.registry import CellData
from ..errors import InvalidParameterError, MissingDependencyError


def _import_shap():
    try:
        import shap
    except ImportError as exc:
        raise MissingDependencyError(
            "SCANVI.shap_predict needs the shap library, an optional extra: pip install 'cellvi[interpret]' "
            f"(import failed: {exc})."
        ) from exc
    return shap


def _dense(X) -> np.ndarray:
    return np.asarray(X.toarray() if sp.issparse(X) else X, dtype=np.float32)


def soft_predictor(model, reference: CellData, batch_size: int | None = None):
    """A function (m, n_genes) counts -> (m, n_classes) class probabilities, as ``predict(soft=True)``
    (posterior mean, after any calibration). Row i takes the covariates of reference cell ``i mod
    n_ref`` (as scvi-tools); the classifier reads them only with ``encode_covariates``."""
    temperature = model._temperature()
    n_ref = reference.n_cells

    def predict(X: np.ndarray) -> np.ndarray:
        rows = np.arange(len(X)) % n_ref
        pick = lambda a: None if a is None else a[rows]  # noqa: E731
        data = CellData(
            X=np.asarray(X, dtype=np.float32),
            batch=reference.batch[rows],
            labels=reference.labels[rows],
            cat_covs=pick(reference.cat_covs),
            cont_covs=pick(reference.cont_covs),
            size_factor=pick(reference.size_factor),
        )
        model.module.eval()
        loader = model._loader(data, None, batch_size or 4096, False, 0, False, False)
        with torch.no_grad():
            parts = [torch.softmax(model.module.classify(b) / temperature, dim=-1).cpu().numpy() for b in loader]
        return np.concatenate(parts).astype(np.float64)

    return predict


def shap_values(model, adata, indices, shap_args: dict | None, background_size: int | None, seed: int):
    """SHAP values of the cells ``indices`` of ``adata`` (default: all of the model's), against a
    background of the model's reference cells (all, as scvi-tools, or ``background_size`` random ones).
    ``shap_args`` go to ``KernelExplainer`` and to its ``shap_values`` (e.g. ``{"nsamples": 200}``).
    Returns what ``shap_values`` returns: (n_cells, n_genes, n_classes) with shap >= 0.45."""
    shap = _import_shap()
    if getattr(model, "minified_data_type", None):
        raise InvalidParameterError("shap_predict needs counts; this model's AnnData is minified.")
    reference = model._cell_data(None)
    if background_size is not None and not (isinstance(background_size, (int, np.integer)) and background_size >= 1):
        raise InvalidParameterError(f"background_size must be a positive integer or None, got {background_size!r}.")
    rows = np.arange(reference.n_cells)
    if background_size is not None and background_size < len(rows):
        rows = np.sort(np.random.default_rng(seed).choice(rows, background_size, replace=False))
    background = _dense(reference.X[rows])
    data = model._cell_data(adata)
    cells = np.arange(data.n_cells) if indices is None else np.arange(data.n_cells)[np.asarray(indices)]
    X = _dense(data.X[cells])
    args = dict(shap_args or {})
    explainer_args = {k: v for k, v in args.items() if k in ("link", "feature_names", "keep_index")}
    call_args = {"silent": True, **{k: v for k, v in args.items() if k not in explainer_args}}
    explainer = shap.KernelExplainer(soft_predictor(model, reference), background, **explainer_args)
    return explainer.shap_values(X, **call_args)
