"""Figures of a perturbation and an HTML section for the cellvi report."""

from __future__ import annotations

import base64
import html
import io

import numpy as np

__all__ = ["grn_report_section", "plot_score", "plot_shift"]


def _axes(ax):
    if ax is None:
        # a Figure outside pyplot: no backend switch (which would stop a notebook's inline plots), no
        # figure left open; Jupyter shows the returned Figure, and savefig works without a display
        from matplotlib.figure import Figure

        fig = Figure(figsize=(5.5, 5))
        return fig, fig.add_subplot()
    return ax.figure, ax


def plot_shift(
    result,
    embedding: np.ndarray,
    ax=None,
    scale: float | None = None,
    colour=None,
    title: str | None = None,
    field: str = "grn",
):
    """Grid vector field of the shift (``field="grn"``, or ``"scvi"`` for the scVI-decoded shift) drawn
    with ``quiver`` over the embedding's cells (grey, or ``colour`` per cell). Returns the figure."""
    from .shift import grid_field

    fig, ax = _axes(ax)
    ax.scatter(
        embedding[:, 0],
        embedding[:, 1],
        s=3,
        c="lightgrey" if colour is None else colour,
        cmap=None if colour is None else "viridis",
        linewidths=0,
        rasterized=True,
    )
    grid = result.grid if field == "grn" else grid_field(embedding, result.scvi["shift"], result.grid["steps"])
    m = grid["mask"]
    P, V = grid["points"][m], grid["vectors"][m]
    ax.quiver(
        P[:, 0], P[:, 1], V[:, 0], V[:, 1], angles="xy", scale_units="xy", scale=scale, width=0.003, color="black"
    )
    ax.set_title(title or f"{field} shift: {', '.join(f'{g}={v:g}' for g, v in result.perturb.items())}")
    ax.set_xticks([])
    ax.set_yticks([])
    return fig


def plot_score(result, embedding: np.ndarray, ax=None, title: str | None = None):
    """Perturbation score on the grid (red: pushes cells forward in pseudotime, blue: back), over the
    embedding's cells. Returns the figure."""
    fig, ax = _axes(ax)
    ax.scatter(embedding[:, 0], embedding[:, 1], s=3, c="lightgrey", linewidths=0, rasterized=True)
    g = result.grid
    m = g["mask"]
    lim = float(np.nanmax(np.abs(result.grid_score[m]))) if m.any() else 1.0
    sc = ax.scatter(
        g["points"][m, 0],
        g["points"][m, 1],
        c=result.grid_score[m],
        cmap="coolwarm",
        vmin=-lim,
        vmax=lim,
        s=25,
        marker="s",
    )
    fig.colorbar(sc, ax=ax, shrink=0.7, label="perturbation score")
    ax.set_title(title or "perturbation score")
    ax.set_xticks([])
    ax.set_yticks([])
    return fig


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}"/>'


def grn_report_section(oracle, result=None, top: int = 15) -> tuple[str, str]:
    """A section for the cellvi report: ``(title, html)`` with the GRN summary (edges per cluster, top
    regulators by out-degree), and for a perturbation its shift field, score map and score per cluster,
    and the scVI agreement if computed. Images are embedded as base64 PNG."""
    parts = [
        (
            f"<p>Expression: {html.escape(oracle.expression_source)}; candidate regulators: "
            f"{html.escape(oracle.regulators.source)}.</p>"
        )
    ]
    if len(oracle.links):
        per = oracle.links.groupby("cluster", observed=True).size().rename("edges").to_frame()
        parts.append("<h4>Edges per cluster (after filtering)</h4>" + per.to_html())
        hubs = oracle.links.groupby("source", observed=True).size().sort_values(ascending=False).head(top)
        parts.append("<h4>Top regulators (out-degree, all clusters)</h4>" + hubs.rename("edges").to_frame().to_html())
    title = "Gene regulatory network"
    if result is not None:
        desc = ", ".join(f"{g}={v:g}" for g, v in result.perturb.items())
        title += f" and perturbation ({html.escape(desc)})"
        parts.append(_png(plot_shift(result, oracle.embedding)))
        if result.score is not None:
            parts.append(_png(plot_score(result, oracle.embedding)))
            parts.append(
                "<h4>Perturbation score per cluster</h4>" + result.score_by_cluster().to_html(float_format="%.4g")
            )
        if result.scvi is not None:
            a = result.scvi["agreement"]
            parts.append(
                f"<p>scVI-decoded shift vs GRN shift: median cosine {a['median_cosine']:.3f}, "
                f"{100 * a['fraction_agree']:.1f}% of {a['n_moving']} moving cells agree in direction.</p>"
            )
    return title, "\n".join(parts)
