"""Scores that a cell belongs to a type the reference never saw ("unknown"), higher = more likely unknown.

Plain NumPy / scikit-learn on arrays: logits (n_cells, n_classes) of a classifier, or latent positions
(n_cells, n_latent). The model side is :meth:`cellvi.model.SCANVI.unknown_score`; which score it uses
was chosen by ``bench/scanvi_unknown.py`` (leave one cell type out of the reference, every type in turn).
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp, softmax
from sklearn.neighbors import NearestNeighbors

LOGIT_SCORES = ("max_probability", "entropy", "energy")
LATENT_SCORES = ("knn_distance", "mahalanobis")
SCORES = LOGIT_SCORES + LATENT_SCORES


def logit_score(logits: np.ndarray, method: str, temperature: float = 1.0) -> np.ndarray:
    """(n_cells,) unknown scores from class logits (n_cells, n_classes) at ``temperature``:
    ``max_probability``: 1 - the largest class probability; ``entropy``: the entropy (nats) of the
    class probabilities; ``energy``: ``-T logsumexp(logits / T)`` (Liu et al. 2020)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    if method == "energy":
        return -temperature * logsumexp(z, axis=1)
    p = softmax(z, axis=1)
    if method == "max_probability":
        return 1.0 - p.max(1)
    if method == "entropy":
        return -(p * np.log(np.clip(p, 1e-300, None))).sum(1)
    raise ValueError(f"unknown logit score {method!r}; one of {LOGIT_SCORES}")


def class_gaussians(latent: np.ndarray, codes: np.ndarray, n_classes: int, ridge: float = 1e-3) -> dict:
    """Class means (n_classes, d) and the precision (d, d) of the covariance shared by the classes
    (pooled within-class, plus ``ridge`` times the mean variance on the diagonal), fitted on labelled
    reference cells: the class-conditional Gaussian density of the latent (Lee et al. 2018). A class
    with no cell gets a mean of NaN and is ignored by :func:`mahalanobis_score`."""
    latent, codes = np.asarray(latent, dtype=np.float64), np.asarray(codes)
    d = latent.shape[1]
    means = np.full((n_classes, d), np.nan)
    centred = np.empty_like(latent)
    for c in range(n_classes):
        cells = codes == c
        if cells.any():
            means[c] = latent[cells].mean(0)
            centred[cells] = latent[cells] - means[c]
    cov = centred.T @ centred / max(len(latent) - 1, 1)
    cov += ridge * max(float(np.trace(cov)) / d, 1e-12) * np.eye(d)
    return {"means": means, "precision": np.linalg.inv(cov)}


def mahalanobis_score(latent: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """(n_cells,) Mahalanobis distance of each cell to the nearest class mean (see :func:`class_gaussians`)."""
    latent = np.asarray(latent, dtype=np.float64)
    means = np.asarray(means, dtype=np.float64)
    means = means[~np.isnan(means).any(1)]
    diff = latent[:, None, :] - means[None, :, :]  # (n, C, d)
    d2 = np.einsum("ncd,de,nce->nc", diff, precision, diff)
    return np.sqrt(np.clip(d2.min(1), 0.0, None))


def knn_distance(reference: np.ndarray, latent: np.ndarray, k: int = 15, exclude_self: bool = False) -> np.ndarray:
    """(n_cells,) mean Euclidean distance of each cell of ``latent`` to its ``k`` nearest ``reference``
    cells (Sun et al. 2022). ``exclude_self``: ``latent`` is ``reference`` itself; a cell is not its own
    neighbour."""
    reference = np.asarray(reference, dtype=np.float32)
    k = min(k, len(reference) - int(exclude_self))
    nn = NearestNeighbors(n_neighbors=k + int(exclude_self)).fit(reference)
    dist, _ = nn.kneighbors(np.asarray(latent, dtype=np.float32))
    return dist[:, int(exclude_self) :].mean(1)
