"""BEELINE's measures of directed edge recovery (Pratapa et al. 2020, Nature Methods).

Both compare a ranking of all ordered gene pairs (no self-loops) with the true network and are divided by
the network's density ``|true edges| / (n_genes * (n_genes - 1))``, the value a random ranking gets:

* AUPRC ratio: the area under the precision-recall curve (``sklearn.metrics.auc`` of
  ``precision_recall_curve``, as BEELINE's ``computeScores``) / density;
* early precision ratio: the precision of the top-k edges, k = number of true edges (edges tied with the
  k-th score included, zero scores never), / density.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["auprc_ratio", "early_precision_ratio", "edge_scores"]


def edge_scores(pred: pd.DataFrame, genes, source="source", target="target", weight="coef_abs") -> np.ndarray:
    """(G, G) matrix of |weight| of predicted edges (0 where absent; the diagonal ignored). Duplicate
    edges (e.g. several clusters) keep the largest."""
    index = pd.Index([str(g) for g in genes])
    M = np.zeros((len(index), len(index)))
    r = index.get_indexer(pred[source].astype(str))
    t = index.get_indexer(pred[target].astype(str))
    ok = (r >= 0) & (t >= 0)
    np.maximum.at(M, (r[ok], t[ok]), np.abs(pred[weight].to_numpy(float)[ok]))
    return M


def _pairs(scores: np.ndarray, truth: pd.DataFrame, genes):
    index = pd.Index([str(g) for g in genes])
    Y = np.zeros(scores.shape, dtype=bool)
    r = index.get_indexer(truth.iloc[:, 0].astype(str))
    t = index.get_indexer(truth.iloc[:, 1].astype(str))
    ok = (r >= 0) & (t >= 0) & (r != t)
    Y[r[ok], t[ok]] = True
    off = ~np.eye(len(index), dtype=bool)
    return np.nan_to_num(np.abs(scores[off])), Y[off]


def auprc_ratio(scores: np.ndarray, truth: pd.DataFrame, genes) -> float:
    """AUPRC / density of directed edges. scores (G, G): regulator rows, target columns; truth: first
    two columns regulator, target."""
    from sklearn.metrics import auc, precision_recall_curve

    s, y = _pairs(scores, truth, genes)
    density = y.mean()
    prec, rec, _ = precision_recall_curve(y, s)
    return float(auc(rec, prec) / density)


def early_precision_ratio(scores: np.ndarray, truth: pd.DataFrame, genes) -> float:
    """Precision of the top-k edges (k = true edges; ties at the k-th included; zeros excluded) / density."""
    s, y = _pairs(scores, truth, genes)
    k = int(y.sum())
    density = y.mean()
    order = np.sort(s)[::-1]
    cutoff = order[k - 1]
    top = (s >= cutoff) & (s > 0)
    if not top.any():
        return 0.0
    return float(y[top].mean() / density)
