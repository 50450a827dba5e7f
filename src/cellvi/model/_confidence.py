"""How far to trust SCANVI's labels: temperature calibration of the classifier and the score of
cell types the reference never saw (mixed into :class:`cellvi.model.SCANVI`; the statistics live in
:mod:`cellvi.model._unknown` and :mod:`cellvi.analysis.calibration`)."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InvalidDataError, InvalidParameterError
from . import _unknown


class ConfidenceMixin:
    """:meth:`calibrate` and :meth:`unknown_score`; needs a SCANVI model."""

    @torch.no_grad()
    def calibrate(
        self, adata=None, indices=None, batch_size: int | None = None, unknown_quantile: float = 0.95
    ) -> dict:
        """Fit a temperature to the classifier on labelled cells it was not trained on, so that
        ``predict(soft=True)`` gives probabilities whose confidence matches their accuracy; and fit the
        detector of cell types the reference never saw (:meth:`unknown_score`), whose threshold is the
        ``unknown_quantile`` of the score on those same held-out cells.

        Default cells: the labelled cells among the validation cells of the last ``train()`` (train with
        ``train_size < 1``); or pass ``adata``/``indices`` of held-out labelled cells. The detector's
        reference statistics come from the model's labelled training cells. Returns the temperature, the
        number of cells, the expected calibration error (15 bins) and NLL on those cells before and after,
        and the unknown-score threshold. Saved with the model and copied to query models
        (``load_query_data``)."""
        from ..analysis.calibration import expected_calibration_error, fit_temperature, nll

        if adata is None and indices is None:
            indices = self.validation_indices
            if len(indices) == 0:
                raise InvalidParameterError(
                    "No held-out cells to calibrate on: train with train_size < 1, or pass indices (or adata) "
                    "of labelled cells the model was not trained on."
                )
        codes = self._cell_data(adata).labels
        codes = codes if indices is None else codes[np.asarray(indices)]
        logits, latent = _unknown.logits_and_latent(self, adata, indices, batch_size)
        labelled = codes < len(self.classes_)
        if labelled.sum() < 10:
            raise InvalidDataError(f"Only {int(labelled.sum())} labelled cells to calibrate on; need at least 10.")
        logits, latent, codes = logits[labelled], latent[labelled], codes[labelled].astype(np.int64)
        temperature = fit_temperature(logits, codes)
        reference = np.asarray(self.train_indices)
        if len(reference) == 0:  # a loaded model: every cell of its data that is not a calibration cell
            reference = np.arange(self.adata.n_obs)
            if adata is None:
                reference = np.setdiff1d(reference, np.arange(self.adata.n_obs)[np.asarray(indices)])
        self.unknown_detector_ = _unknown.fit(self, logits, latent, reference, temperature, unknown_quantile)

        def probs(t):
            z = logits / t
            e = np.exp(z - z.max(1, keepdims=True))
            return e / e.sum(1, keepdims=True)

        self.temperature_ = temperature
        return {
            "temperature": temperature,
            "n_cells": int(len(codes)),
            "ece_before": expected_calibration_error(probs(1.0), codes),
            "ece_after": expected_calibration_error(probs(temperature), codes),
            "nll_before": nll(logits, codes),
            "nll_after": nll(logits, codes, temperature),
            "unknown_method": self.unknown_detector_["method"],
            "unknown_threshold": self.unknown_detector_["thresholds"][self.unknown_detector_["method"]],
        }

    def unknown_score(
        self, adata=None, indices=None, method: str | None = None, batch_size: int | None = None
    ) -> np.ndarray:
        """(n_cells,) score that a cell's type is none the reference was trained on; higher = more likely
        unknown. Default ``method``: the one chosen by measurement (``bench/scanvi_unknown.py``),
        ``"mahalanobis"``: the Mahalanobis distance of the cell's latent mean to the nearest class mean of the
        labelled reference cells (shared covariance; a class-conditional Gaussian density). Also
        ``"knn_distance"`` (mean distance to the 15 nearest labelled reference cells, of at most 5,000 kept),
        ``"energy"``, ``"entropy"``, ``"max_probability"`` (see :mod:`cellvi.analysis.unknown`). Needs
        :meth:`calibrate` on the reference first. Threshold fitted there:
        ``unknown_detector_["thresholds"][method]``."""
        detector = self._detector()
        logits, latent = _unknown.logits_and_latent(self, adata, indices, batch_size)
        return _unknown.score(detector, logits, latent, method or detector["method"], self._temperature())

    def _detector(self) -> dict:
        return _unknown.detector_of(self)

    def _temperature(self) -> float:
        return float(getattr(self, "temperature_", None) or 1.0)

    def _saved_extras(self) -> dict:
        return _unknown.extras_of(self)

    def _restore_extras(self, extras: dict) -> None:
        _unknown.restore_extras(self, extras)
