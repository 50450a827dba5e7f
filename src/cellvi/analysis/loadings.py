"""Reading a linear decoder's loadings (:meth:`cellvi.model.LinearSCVI.get_loadings`): top genes per
factor, the recovery of known gene programmes, and a plot."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import InvalidParameterError, InvalidTypeError


def _loadings_of(model_or_loadings) -> pd.DataFrame:
    if isinstance(model_or_loadings, pd.DataFrame):
        return model_or_loadings
    if hasattr(model_or_loadings, "get_loadings"):
        return model_or_loadings.get_loadings()
    raise InvalidTypeError("Pass a LinearSCVI model or its get_loadings() DataFrame (genes x factors).")


def _check_n_top(n_top, n_genes: int) -> None:
    if not isinstance(n_top, (int, np.integer)) or isinstance(n_top, bool) or not 1 <= n_top <= n_genes:
        raise InvalidParameterError(f"n_top must be an integer in [1, {n_genes}], got {n_top!r}.")


def top_genes(model_or_loadings, n_top: int = 10) -> pd.DataFrame:
    """The ``n_top`` genes with the largest loadings of each factor: a DataFrame with columns
    ``factor``, ``rank`` (0 = largest), ``gene``, ``loading``. For loadings of any sign the largest
    positive ones are listed (a factor's negative end is the top of ``-W``)."""
    w = _loadings_of(model_or_loadings)
    _check_n_top(n_top, len(w))
    rows = []
    for factor in w.columns:
        col = w[factor].sort_values(ascending=False).iloc[:n_top]
        rows += [(factor, r, gene, float(v)) for r, (gene, v) in enumerate(col.items())]
    return pd.DataFrame(rows, columns=["factor", "rank", "gene", "loading"])


def program_precision(model_or_loadings, programs: dict, n_top: int = 50) -> pd.DataFrame:
    """For each known programme (name -> list of genes), the factor whose ``n_top`` most extreme
    loadings (the largest, or the most negative: whichever end matches better) contain most of its
    genes. Returns a DataFrame indexed by programme with ``factor``, ``end`` ("+" or "-") and
    ``precision`` = (programme genes among those ``n_top``) / ``n_top``."""
    w = _loadings_of(model_or_loadings)
    _check_n_top(n_top, len(w))
    genes = np.asarray(w.index)
    values = w.to_numpy()
    order = np.argsort(-values, axis=0, kind="stable")
    tops = {"+": genes[order[:n_top]], "-": genes[order[::-1][:n_top]]}
    rows = {}
    for name, members in programs.items():
        members = set(members)
        best = (None, "+", -1.0)
        for end, top in tops.items():
            for k, factor in enumerate(w.columns):
                precision = len(members.intersection(top[:, k])) / n_top
                if precision > best[2]:
                    best = (factor, end, precision)
        rows[name] = best
    return pd.DataFrame.from_dict(rows, orient="index", columns=["factor", "end", "precision"])


def plot_loadings(model_or_loadings, n_top: int = 10, factors=None, ncols: int = 5):
    """A matplotlib Figure with one bar chart per factor of its ``n_top`` largest loadings (gene names
    on the y axis). ``factors``: a subset of the columns (default all)."""
    from matplotlib.figure import Figure  # no pyplot: works without a display

    w = _loadings_of(model_or_loadings)
    if factors is not None:
        missing = [f for f in factors if f not in w.columns]
        if missing:
            raise InvalidParameterError(f"Unknown factors {missing}; the loadings have {list(w.columns)}.")
        w = w[list(factors)]
    top = top_genes(w, n_top)
    n = w.shape[1]
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    fig = Figure(figsize=(2.6 * ncols, 0.22 * n_top * nrows + 0.8 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, factor in zip(axes, w.columns):
        part = top[top["factor"] == factor].iloc[::-1]
        ax.barh(part["gene"], part["loading"], color="tab:blue")
        ax.set_title(str(factor), fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle(f"Top {n_top} loadings per factor")
    return fig
