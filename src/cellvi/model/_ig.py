"""``SCANVI.predict(ig_interpretability=True)``: integrated-gradients attributions of the classifier per
gene, summarised as scvi-tools' ``get_ranked_features`` does (mean and SD over cells, ranked)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..errors import InvalidParameterError
from ..module.attribution import integrated_gradients


def attributions(model, adata=None, indices=None, batch_size: int | None = None, ig_args: dict | None = None):
    """(n_cells, n_genes) attributions of each cell's predicted class logit to each gene's count."""
    args = dict(ig_args or {})
    n_steps = args.pop("n_steps", 50)
    if args:
        raise InvalidParameterError(f"ig_args takes only n_steps (the baseline is zero counts), got {sorted(args)}.")
    if getattr(model, "minified_data_type", None):
        raise InvalidParameterError("ig_interpretability needs counts; this model's AnnData is minified.")
    parts = []
    for b in model._batches(adata, indices, batch_size):
        with torch.no_grad():
            target = model.module.classify(b).argmax(1)
        with torch.enable_grad():
            parts.append(integrated_gradients(model.module.classify, b, target, n_steps).cpu().numpy())
    return np.concatenate(parts) if parts else np.zeros((0, model.adata.n_vars), dtype=np.float32)


def ranked_features(model, attrs: np.ndarray) -> pd.DataFrame:
    """scvi-tools' table: one row per gene (``feature``, ``feature_idx``, ``modality``,
    ``attribution_mean``, ``attribution_std``, ``cells``), by decreasing mean attribution."""
    mean, std = attrs.mean(0), attrs.std(0)
    order = np.argsort(-mean, kind="stable")
    names = np.asarray(model.registry.var_names)
    return pd.DataFrame(
        {
            "feature": names[order],
            "feature_idx": order,
            "modality": "None",
            "attribution_mean": mean[order],
            "attribution_std": std[order],
            "cells": attrs.shape[0],
        }
    )
