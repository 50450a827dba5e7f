"""The report of ``cellvi map-query``: the transferred labels with their confidence, and the cells marked
unknown (a type the reference never saw). Built from the query AnnData's obs columns written by the
command (``predicted_labels``, ``prediction_confidence``, ``unknown_score``, ``is_unknown``) and its
``X_scvi`` latent; UMAPs show at most ``PLOT_CELLS`` random cells (stated in the report)."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd

from ..data.matrix import sample_rows
from .html import Report
from .run_report import PLOT_CELLS


def label_table(obs: pd.DataFrame) -> pd.DataFrame:
    """Per predicted label: cells, median and 10th percentile of the confidence, cells marked unknown."""
    groups = obs.groupby(obs["predicted_labels"].astype(str), observed=True)
    table = pd.DataFrame(
        {
            "cells": groups.size(),
            "median confidence": groups["prediction_confidence"].median(),
            "10th percentile confidence": groups["prediction_confidence"].quantile(0.1),
        }
    )
    if "is_unknown" in obs:
        table["marked unknown"] = groups["is_unknown"].sum().astype(int)
    return table.sort_values("cells", ascending=False).rename_axis("predicted label")


def _umaps(report: Report, query, seed: int) -> None:
    import matplotlib.pyplot as plt
    import scanpy as sc

    rows = sample_rows(query.n_obs, PLOT_CELLS, seed)
    view = sc.AnnData(obs=query.obs.iloc[rows].copy(), obsm={"X_scvi": query.obsm["X_scvi"][rows]})
    sc.pp.neighbors(view, use_rep="X_scvi", n_neighbors=min(15, max(2, view.n_obs - 1)), random_state=seed)
    sc.tl.umap(view, random_state=seed)
    if "is_unknown" in view.obs:
        marked = np.where(view.obs["is_unknown"].to_numpy(bool), "unknown", "known")
        view.obs["marked unknown"] = pd.Categorical(marked, categories=["known", "unknown"])
        view.uns["marked unknown_colors"] = ["#c8c8c8", "#d62728"]
    colours = [
        k for k in ("predicted_labels", "prediction_confidence", "unknown_score", "marked unknown") if k in view.obs
    ]
    fig, axes = plt.subplots(1, len(colours), figsize=(5.6 * len(colours), 4.4), squeeze=False)
    fig.subplots_adjust(wspace=0.5)
    for ax, key in zip(axes[0], colours):
        sc.pl.umap(view, color=key, ax=ax, show=False, title=key, frameon=False, legend_fontsize=8)
    report.add_figure(
        "UMAP of the query",
        fig,
        f"UMAP of the query's latent (X_scvi, in the reference's space); {len(rows):,} of {query.n_obs:,} cells drawn.",
    )


def build_query_report(query, summary: dict, seed: int = 0) -> Report:
    """The report of one ``cellvi map-query`` run; ``summary``: what the command did (shown as given)."""
    report = Report("cellvi map-query", f"{query.n_obs:,} query cells mapped onto {summary['reference']}")
    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in summary.items())
    report.add("Summary", f'<table class="kv">{rows}</table>')
    if "predicted_labels" in query.obs:
        note = (
            "Confidence: the classifier's probability of the predicted label, temperature-scaled on held-out "
            "labelled reference cells (SCANVI.calibrate)."
        )
        if "is_unknown" in query.obs:
            note += (
                " Marked unknown: the unknown score (Mahalanobis distance of the latent to the nearest reference "
                "class) is above the reference's threshold (the 95% quantile on held-out labelled reference "
                "cells); such cells may be a type the reference never saw."
            )
        report.add_table("Predicted labels", label_table(query.obs), note)
    if query.n_obs >= 3:
        _umaps(report, query, seed)
    return report


def unknown_counts(is_unknown: np.ndarray) -> str:
    """``"k of n cells (p%)"``."""
    n, k = len(is_unknown), int(np.sum(is_unknown))
    return f"{k:,} of {n:,} cells ({100 * k / max(n, 1):.1f}%)"
