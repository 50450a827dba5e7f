"""The sections of the ``cellvi run`` report, each built from the analysed AnnData and the model.

Plots show at most ``PLOT_CELLS`` random cells and the marker dot plot at most ``DOT_CELLS``
(stated in the report). scIB metrics use at most ``SCIB_CELLS`` cells.
"""

from __future__ import annotations

import html
import json

import numpy as np
import pandas as pd

from ..data.matrix import sample_rows
from .html import Report, figure_html, table_html

PLOT_CELLS = 50_000
DOT_CELLS = 20_000
SCIB_CELLS = 5_000


def _count_rows(counts, rows: np.ndarray, genes=None):
    """CSR counts of cells ``rows`` (sorted) and genes ``genes`` (names; default all) of ``counts``,
    which may be backed (only those rows are read)."""
    import scipy.sparse as sp

    block = sp.csr_matrix(counts.X[rows], dtype=np.float32)
    return block if genes is None else block[:, counts.var_names.get_indexer(list(genes))]


def _umaps(report: Report, tdata, args) -> None:
    import matplotlib.pyplot as plt
    import scanpy as sc

    rows = sample_rows(tdata.n_obs, PLOT_CELLS, args.seed)
    view = sc.AnnData(
        obs=tdata.obs.iloc[rows].copy(),
        obsm={"X_umap": tdata.obsm["X_umap"][rows]},
        uns={k: v for k, v in tdata.uns.items() if k.endswith("_colors")},
    )  # no matrix copied
    colours = [
        (k, t)
        for k, t in (
            (args.batch_key, "batch"),
            (args.labels_key, "labels"),
            ("leiden", "Leiden clusters"),
            ("dpt_pseudotime", "pseudotime"),
            ("doublet_score", "doublet score"),
        )
        if k and k in tdata.obs
    ]
    fig, axes = plt.subplots(1, len(colours), figsize=(6.2 * len(colours), 4.6), squeeze=False)
    fig.subplots_adjust(wspace=0.55)
    for ax, (key, title) in zip(axes[0], colours):
        sc.pl.umap(
            view,
            color=key,
            ax=ax,
            show=False,
            title=f"{title} ({key})",
            frameon=False,
            legend_loc="on data" if key == "leiden" else "right margin",
            legend_fontsize=8,
        )
    note = f"UMAP of the scVI latent (X_scvi); {len(rows):,} of {tdata.n_obs:,} cells drawn."
    fitted = tdata.uns.get("umap", {}).get("fit_cells")
    if fitted:
        note += (
            f" The layout was fitted on {fitted:,} random cells (umap-learn, scanpy's settings); every other"
            " cell was placed by umap.UMAP.transform against that fit."
        )
    report.add_figure("UMAP", fig, note)


def _training(report: Report, model) -> None:
    import matplotlib.pyplot as plt

    hist = model.history
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for col, label in (("elbo_train", "train"), ("elbo_validation", "validation")):
        if col in hist and hist[col].notna().any():
            ax.plot(hist.index, hist[col], label=label, marker="." if len(hist) < 30 else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel("negative ELBO per cell (lower is better)")
    ax.legend()
    ax.grid(alpha=0.3)
    report.add_figure(
        "Training curves",
        fig,
        f"{len(hist)} epochs; negative evidence lower bound per cell (scvi-tools' sign) on the "
        "training cells and on the held-out validation cells (10%). The KL warm-up lasts half the epochs.",
    )


def _integration(report: Report, tdata, counts, summary, args) -> None:
    from cellvi import analysis

    m = summary["metrics"]
    lines = []
    if "batch_mixing_entropy" in m:
        lines.append(
            f"<li>Batch mixing entropy (k = 50 neighbours, 1 = perfectly mixed, 0 = separate): "
            f"<b>{m['batch_mixing_entropy']:.3f}</b></li>"
        )
    if "knn_label_accuracy" in m:
        lines.append(
            f"<li>Label conservation, accuracy of a 15-nearest-neighbour classifier of "
            f"<code>{html.escape(args.labels_key)}</code> (5-fold): <b>{m['knn_label_accuracy']:.3f}</b></li>"
        )
    if not lines:
        lines.append("<li>Give --batch-key (with at least two batches) and/or --labels-key for these metrics.</li>")
    body = (
        f"<ul>{''.join(lines)}</ul><p class='note'>On {summary['subsamples']['metric_cells']:,} random "
        f"cells of the scVI latent.</p>"
    )
    if args.labels_key and args.batch_key:
        body += _scib(analysis, tdata, counts, args)
    report.add("Batch mixing and label conservation", body)


def _scib(analysis, tdata, counts, args) -> str:
    if getattr(args, "no_scib", False):
        return "<p class='note'>scIB metrics skipped (--no-scib).</p>"
    import anndata as ad

    from ..errors import CellviError

    rows = sample_rows(tdata.n_obs, SCIB_CELLS, args.seed)
    sub = ad.AnnData(_count_rows(counts, rows), obs=tdata.obs.iloc[rows][[args.batch_key, args.labels_key]].copy())
    sub.obsm["X_scvi"] = tdata.obsm["X_scvi"][rows]
    try:
        table = analysis.benchmark_integration(sub, ["X_scvi"], args.batch_key, args.labels_key, neighbors="exact")
    except (CellviError, ImportError) as exc:  # a missing extra, or too few batches/labels: say so, go on
        return f"<p class='note'>scIB metrics not computed: {html.escape(str(exc).splitlines()[0][:300])}</p>"
    return (
        "<h3>scIB metrics</h3>"
        + table_html(table.T.rename_axis("metric"))
        + f"<p class='note'>scib-metrics on {len(rows):,} random cells (exact neighbours), unscaled.</p>"
    )


def _clusters(report: Report, tdata, args) -> None:
    if args.batch_key:
        table = pd.crosstab(tdata.obs["leiden"], tdata.obs[args.batch_key], margins=True, margins_name="total")
    else:
        table = tdata.obs["leiden"].value_counts().sort_index().to_frame("cells")
    report.add_table("Cluster sizes by batch", table, "Cells per Leiden cluster (rows) and batch (columns).")


def _paga(report: Report, tdata) -> None:
    import matplotlib.pyplot as plt
    import scanpy as sc

    fig, ax = plt.subplots(figsize=(6, 5))
    sc.pl.paga(tdata, ax=ax, show=False, threshold=0.05, fontsize=9, node_size_scale=1.5, frameon=False)
    report.add_figure(
        "PAGA graph",
        fig,
        "Abstracted graph of the Leiden clusters (edges: connectivity >= 0.05; node size: cluster size).",
    )


def _markers(report: Report, tdata, counts, markers: pd.DataFrame, args) -> None:
    import matplotlib.pyplot as plt
    import scanpy as sc

    if markers.empty:
        report.add("Marker genes", "<p>No cluster has up-regulated genes.</p>")
        return
    top = markers[markers["rank"] <= 3]
    genes = {str(c): list(g) for c, g in top.groupby("cluster", observed=True)["gene"]}
    used = list(dict.fromkeys(g for gs in genes.values() for g in gs))
    rows = sample_rows(tdata.n_obs, DOT_CELLS, args.seed)
    view = sc.AnnData(
        _count_rows(counts, rows, used), obs=tdata.obs.iloc[rows][["leiden"]].copy(), var=pd.DataFrame(index=used)
    )
    sc.pp.normalize_total(view, target_sum=1e4)  # over these genes only: relative display
    sc.pp.log1p(view)
    dp = sc.pl.dotplot(view, genes, groupby="leiden", show=False, return_fig=True, standard_scale="var")
    dp.make_figure()
    fig = plt.gcf()
    note = (
        f"Top 3 markers per cluster; dots from {len(rows):,} cells (log-normalised counts, scaled per gene). "
        f"Markers: cellvi's one-vs-all Bayesian DE (mode 'change', LFC > 0), posterior samples of "
        f"{args.de_cells:,} random cells per side. All top {markers['rank'].max()} per cluster: markers.csv."
    )
    table = markers[
        [
            "cluster",
            "rank",
            "gene",
            "proba_de",
            "lfc_mean",
            "bayes_factor",
            "non_zeros_proportion1",
            "non_zeros_proportion2",
        ]
    ]
    report.add(
        "Marker genes",
        figure_html(fig, "marker dot plot")
        + f"<p class='note'>{html.escape(note)}</p>"
        + table_html(table, index=False),
    )


def _doublets(report: Report, tdata, args) -> None:
    """Histogram of SOLO's doublet scores and the predicted doublets per batch (``--doublets``)."""
    import matplotlib.pyplot as plt

    score = tdata.obs["doublet_score"].to_numpy()
    called = tdata.obs["predicted_doublet"].to_numpy().astype(bool)
    group = tdata.obs[args.batch_key].astype(str) if args.batch_key else pd.Series("all", index=tdata.obs_names)
    table = pd.DataFrame({"cells": group.value_counts(sort=False)})
    table["predicted doublets"] = group[called].value_counts().reindex(table.index).fillna(0).astype(int)
    table["%"] = (100 * table["predicted doublets"] / table["cells"]).round(1)
    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.hist(score, bins=50, color="#4c72b0")
    ax.axvline(0.5, color="k", lw=1, ls="--")
    ax.set_xlabel("doublet score, P(doublet)")
    ax.set_ylabel("cells")
    note = (
        "SOLO (cellvi.external.SOLO) on the scVI model, trained batch by batch on simulated doublets (sums "
        "of two cells of the batch); cells with P(doublet) > 0.5 (dashed line) are predicted doublets. "
        "Stored as obs['doublet_score'] and obs['predicted_doublet'] in result.h5ad; nothing is removed."
    )
    report.add(
        "Doublets (SOLO)",
        figure_html(fig, "doublet score histogram")
        + f"<p class='note'>{html.escape(note)}</p>"
        + table_html(table.rename_axis(args.batch_key or "batch")),
    )


def _summary(report: Report, tdata, summary: dict) -> None:
    info = {
        "input": summary["source"],
        "cells x genes": f"{summary['cells']:,} x {summary['genes']:,} ({summary['genes_trained']:,} trained on)",
        "opened backed": summary["backed"],
        "epochs": summary["epochs"],
        "clusters": summary["clusters"],
        "root cell": summary["root_cell"] or "none (no pseudotime)",
        "parameters": json.dumps(summary["params"]),
        "versions": json.dumps(summary["versions"]),
    }
    info_df = pd.DataFrame({"value": [str(v) for v in info.values()]}, index=list(info))
    steps = pd.DataFrame(summary["steps"]).set_index("step")
    sub = summary["subsamples"]
    note = (
        f"Subsamples: highly variable genes on {sub['hvg_cells']:,} cells, metrics on {sub['metric_cells']:,}, "
        f"marker DE {sub['de_cells_per_side']:,} cells per side, plots at most {PLOT_CELLS:,} cells, "
        f"UMAP layout fitted on {sub.get('umap_fit_cells', summary['cells']):,} cells, PAGA on the neighbour "
        f"graph among {sub.get('paga_cells', summary['cells']):,} cells."
    )
    report.add(
        "Run summary",
        table_html(info_df, css_class="kv")
        + "<h3>Time and memory per step</h3>"
        + table_html(steps)
        + f"<p class='note'>{html.escape(note)}</p>",
    )


def _loadings(report: Report, model) -> None:
    from cellvi.analysis import plot_loadings

    report.add_figure(
        "Gene programmes (LinearSCVI loadings)",
        plot_loadings(model, n_top=10),
        "Each latent factor's ten largest loadings: the genes whose log-rate the factor raises most "
        "(docs/linear_decoder.md). Batch offsets are not part of the loadings.",
    )


def build_run_report(tdata, model, summary: dict, markers: pd.DataFrame, args, counts=None) -> Report:
    """The report of one ``cellvi run``: tdata holds X_scvi, X_umap, leiden, PAGA (and dpt_pseudotime);
    ``counts`` (default ``tdata``), in memory or backed, the trained-on genes' counts (dot plot, scIB)."""
    counts = tdata if counts is None else counts
    import matplotlib

    matplotlib.use("Agg")
    report = Report(
        "cellvi run report",
        f"{summary['source']} - {summary['cells']:,} cells x "
        f"{summary['genes']:,} genes - seed {summary['params']['seed']}",
    )
    _umaps(report, tdata, args)
    _training(report, model)
    if hasattr(model, "get_loadings"):
        _loadings(report, model)
    _integration(report, tdata, counts, summary, args)
    if "doublet_score" in tdata.obs:
        _doublets(report, tdata, args)
    _clusters(report, tdata, args)
    _paga(report, tdata)
    _markers(report, tdata, counts, markers, args)
    _summary(report, tdata, summary)
    return report
