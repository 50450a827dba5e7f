"""SCANVI's detector of cell types the reference never saw: fitted by ``SCANVI.calibrate()``, saved with
the model, copied to query models, used by ``SCANVI.unknown_score()`` and ``predict(unknown_threshold=)``.

What it keeps (plain arrays, JSON-serialisable): a subsample of the labelled reference cells' latent means
(for the kNN distance), the class means and shared precision of the latent (Mahalanobis), and per score a
threshold: the ``quantile`` of that score on held-out labelled reference cells (never the query).
"""

from __future__ import annotations

import numpy as np
import torch

from ..analysis import unknown as scores
from ..data.matrix import sample_rows
from ..errors import InvalidDataError, InvalidParameterError

DEFAULT_METHOD = "mahalanobis"  # chosen by bench/scanvi_unknown.py (bench/results/scanvi_unknown.md)
DEFAULT_QUANTILE = 0.95
MAX_REFERENCE_CELLS = 5000
KNN_K = 15
UNKNOWN_LABEL = "unknown"


@torch.no_grad()
def logits_and_latent(model, adata=None, indices=None, batch_size: int | None = None):
    """Class logits (n_cells, n_classes) and latent means (n_cells, n_latent), float64, at the posterior mean."""
    logits, latent = [], []
    for b in model._batches(adata, indices, batch_size):
        inf = model.module.inference(b, sample=False)
        logits.append(model.module._logits(inf).cpu().numpy())
        latent.append(inf["qz_m"].cpu().numpy())
    n_classes, n_latent = len(model.classes_), model.module.n_latent
    if not logits:
        return np.zeros((0, n_classes)), np.zeros((0, n_latent))
    return np.concatenate(logits).astype(np.float64), np.concatenate(latent).astype(np.float64)


def fit(model, heldout_logits, heldout_latent, reference_indices, temperature: float, quantile: float, seed: int = 0):
    """The detector of ``model`` (a dict): reference statistics from its labelled cells
    ``reference_indices`` of ``model.adata``, thresholds from the held-out cells' scores."""
    if not 0.5 <= quantile < 1:
        raise InvalidParameterError(f"unknown_quantile must be in [0.5, 1), got {quantile}.")
    codes = model._cell_data().labels[reference_indices]
    labelled = codes < len(model.classes_)
    reference_indices, codes = np.asarray(reference_indices)[labelled], codes[labelled]
    if len(codes) < 2 * len(model.classes_):
        raise InvalidDataError(
            f"Only {len(codes)} labelled training cells to describe the {len(model.classes_)} reference classes "
            "for the unknown score; calibrate the reference model (not a query model)."
        )
    _, ref_latent = logits_and_latent(model, None, reference_indices)
    gauss = scores.class_gaussians(ref_latent, codes, len(model.classes_))
    if len(ref_latent) > MAX_REFERENCE_CELLS:
        keep = sample_rows(len(ref_latent), MAX_REFERENCE_CELLS, seed)
        ref_latent = ref_latent[keep]
    detector = {
        "method": DEFAULT_METHOD,
        "quantile": float(quantile),
        "k": KNN_K,
        "reference_latent": ref_latent.astype(np.float32),
        "class_means": gauss["means"],
        "precision": gauss["precision"],
    }
    held = {m: score(detector, heldout_logits, heldout_latent, m, temperature) for m in scores.SCORES}
    detector["thresholds"] = {m: float(np.quantile(s, quantile)) for m, s in held.items()}
    return detector


def score(detector: dict, logits, latent, method: str, temperature: float) -> np.ndarray:
    """(n_cells,) unknown score ``method`` (one of :data:`cellvi.analysis.unknown.SCORES`)."""
    if method in scores.LOGIT_SCORES:
        return scores.logit_score(logits, method, temperature)
    if method == "knn_distance":
        return scores.knn_distance(detector["reference_latent"], latent, detector["k"])
    if method == "mahalanobis":
        return scores.mahalanobis_score(latent, detector["class_means"], detector["precision"])
    raise InvalidParameterError(f"method must be one of {scores.SCORES}, got {method!r}.")


def to_json(detector: dict) -> dict:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in detector.items()}


def from_json(saved: dict) -> dict:
    out = dict(saved)
    out["reference_latent"] = np.asarray(saved["reference_latent"], dtype=np.float32)
    out["class_means"] = np.asarray(saved["class_means"], dtype=np.float64)
    out["precision"] = np.asarray(saved["precision"], dtype=np.float64)
    return out


def detector_of(model) -> dict:
    detector = getattr(model, "unknown_detector_", None)
    if detector is None:
        raise InvalidParameterError(
            "No unknown-type detector: call calibrate() on the reference model (trained with "
            "train_size < 1) before mapping the query; it is saved with the model."
        )
    return detector


def threshold_of(detector: dict, threshold: float | str) -> float:
    """``predict``'s ``unknown_threshold``: "auto" (the reference's threshold of the default score) or a number."""
    if isinstance(threshold, str):
        if threshold != "auto":
            raise InvalidParameterError(f"unknown_threshold must be 'auto', a number or None, got {threshold!r}.")
        return float(detector["thresholds"][detector["method"]])
    return float(threshold)


def extras_of(model) -> dict:
    """What SCANVI saves beside its weights: the calibration temperature and the detector."""
    out: dict = {}
    if getattr(model, "temperature_", None) is not None:
        out["temperature"] = float(model.temperature_)
    if getattr(model, "unknown_detector_", None) is not None:
        out["unknown_detector"] = to_json(model.unknown_detector_)
    return out


def restore_extras(model, extras: dict) -> None:
    if "temperature" in extras:
        model.temperature_ = float(extras["temperature"])
    if "unknown_detector" in extras:
        model.unknown_detector_ = from_json(extras["unknown_detector"])
