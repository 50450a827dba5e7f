"""Integration metrics on a latent space: is biology kept (labels) and are batches mixed?

Both use scikit-learn's nearest neighbours (installed with ``cellvi[analysis]``).
"""

from __future__ import annotations

import numpy as np


def knn_label_accuracy(latent: np.ndarray, labels, k: int = 15, n_folds: int = 5, seed: int = 0) -> float:
    """Mean accuracy of a k-nearest-neighbour classifier of ``labels`` from ``latent`` under stratified
    ``n_folds``-fold cross-validation. latent: (n_cells, n_dims); labels: (n_cells,). In [0, 1]."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    scores = cross_val_score(KNeighborsClassifier(n_neighbors=k), latent, np.asarray(labels), cv=folds)
    return float(np.mean(scores))


def batch_mixing_entropy(latent: np.ndarray, batches, k: int = 50) -> float:
    """Mean over cells of the entropy of batch labels among the cell's ``k`` nearest neighbours (itself
    excluded), divided by log(number of batches): 1 is perfect mixing, 0 no mixing."""
    from sklearn.neighbors import NearestNeighbors

    codes, _ = _codes(batches)
    n_batches = codes.max() + 1
    if n_batches < 2:
        raise ValueError("Batch mixing needs at least two batches.")
    idx = NearestNeighbors(n_neighbors=k + 1).fit(latent).kneighbors(latent, return_distance=False)[:, 1:]
    counts = np.stack([(codes[idx] == b).sum(1) for b in range(n_batches)], axis=1) / k
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(counts > 0, counts * np.log(counts), 0.0).sum(1)
    return float(np.mean(entropy) / np.log(n_batches))


def _codes(values) -> tuple[np.ndarray, np.ndarray]:
    uniques, codes = np.unique(np.asarray(values).astype(str), return_inverse=True)
    return codes, uniques
