"""Calibration of class probabilities: expected calibration error and temperature scaling (Guo et al.
2017). Plain NumPy/SciPy on (n_cells, n_classes) arrays; the model side is :meth:`SCANVI.calibrate`."""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

LOG_T_RANGE = (-4.0, 4.0)  # temperatures between e^-4 and e^4


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """ECE: the cells are binned by confidence (their largest probability, ``n_bins`` equal-width bins);
    the mean over bins, weighted by their share of cells, of |accuracy - mean confidence|. probs:
    (n_cells, n_classes); labels: (n_cells,) integer class codes. In [0, 1]; 0 is perfectly calibrated."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    if len(probs) == 0:
        raise ValueError("No cells to compute a calibration error on.")
    conf, pred = probs.max(1), probs.argmax(1)
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in np.unique(bins):
        cells = bins == b
        ece += cells.mean() * abs(float((pred[cells] == labels[cells]).mean()) - float(conf[cells].mean()))
    return float(ece)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under softmax(logits / temperature)."""
    logp = log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)
    return float(-logp[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T > 0 minimising the NLL of softmax(logits / T) on these cells (held out from
    training): T > 1 softens over-confident probabilities. The argmax, so the predicted labels, is
    unchanged."""
    res = minimize_scalar(lambda log_t: nll(logits, labels, float(np.exp(log_t))), bounds=LOG_T_RANGE, method="bounded")
    return float(np.exp(res.x))
