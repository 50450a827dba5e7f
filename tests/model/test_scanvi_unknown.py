"""SCANVI label transfer users can trust: the unknown-type score, and the calibration saved with the model."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

import cellvi
from cellvi.analysis import unknown
from cellvi.errors import InvalidDataError, InvalidParameterError
from cellvi.model import SCANVI, SCVI


def test_scores_on_arrays():
    logits = np.array([[5.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # a confident cell, then a uniform one
    for method in unknown.LOGIT_SCORES:
        s = unknown.logit_score(logits, method)
        assert s[1] > s[0], method
    np.testing.assert_allclose(unknown.logit_score(logits, "entropy")[1], np.log(3))
    np.testing.assert_allclose(unknown.logit_score(logits, "energy", 2.0), -2.0 * np.log(np.exp(logits / 2).sum(1)))
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(500, 2))
    codes = (ref[:, 0] > 0).astype(int)
    ref[codes == 1] += [4.0, 0.0]
    near, far = np.array([[0.0, 0.0]]), np.array([[0.0, 8.0]])
    assert unknown.knn_distance(ref, far)[0] > unknown.knn_distance(ref, near)[0] + 5
    g = unknown.class_gaussians(ref, codes, 3)  # class 2 has no cell: ignored
    assert np.isnan(g["means"][2]).all()
    d = unknown.mahalanobis_score(far, g["means"], g["precision"])[0]
    expected = min(np.sqrt((far[0] - m) @ g["precision"] @ (far[0] - m)) for m in g["means"][:2])
    np.testing.assert_allclose(d, expected)
    self_dist = unknown.knn_distance(ref, ref, k=5, exclude_self=True)
    assert (self_dist > 0).all()


@pytest.fixture(scope="module")
def left_out():
    """A reference without the cell type 'type3' (two batches), calibrated; the query: a third batch with
    every type, its labels hidden."""
    cellvi.settings.seed = 0
    a = cellvi.data.simulate(n_cells=900, n_genes=200, n_batches=3, n_cell_types=4, seed=3, de_fraction=0.2, de_lfc=3.0)
    a.obs["cell_type"] = a.obs["cell_type"].astype(str)
    ref = a[(a.obs["batch"] != "batch2") & (a.obs["cell_type"] != "type3")].copy()
    query = a[a.obs["batch"] == "batch2"].copy()
    truth = query.obs.pop("cell_type").to_numpy()
    SCVI.setup_anndata(ref, batch_key="batch", labels_key="cell_type")
    vae = SCVI(ref, n_hidden=32, n_latent=5)
    vae.train(max_epochs=30)
    model = SCANVI.from_scvi_model(vae, unlabeled_category="Unknown")
    model.train(max_epochs=15, train_size=0.8)
    return model, query, truth


def test_unknown_type_is_scored_and_marked(left_out, tmp_path):
    model, query, truth = left_out
    assert "type3" in set(truth) and "type3" not in model.classes_
    with pytest.raises(InvalidParameterError, match="calibrate"):
        model.unknown_score()
    report = model.calibrate()
    assert report["unknown_method"] == "mahalanobis" and report["unknown_threshold"] > 0
    qm = SCANVI.load_query_data(query.copy(), model)
    qm.train(max_epochs=5)
    with pytest.raises(InvalidDataError, match="reference"):  # its training cells are unlabelled
        qm.calibrate(adata=model.adata, indices=model.validation_indices)
    unseen = truth == "type3"
    for method in unknown.SCORES:
        s = qm.unknown_score(method=method)
        assert s.shape == (query.n_obs,)
    assert (qm.predict()[~unseen] == truth[~unseen]).mean() > 0.9
    auroc = roc_auc_score(unseen, qm.unknown_score())
    assert auroc > 0.8, auroc
    marked = qm.predict(unknown_threshold="auto") == "unknown"
    assert marked[unseen].mean() > 0.5 and marked[~unseen].mean() < 0.3
    assert (qm.predict(unknown_threshold=np.inf) != "unknown").all()
    ref_marked = model.predict(unknown_threshold=-np.inf, keep_observed=True)  # observed labels are kept
    np.testing.assert_array_equal(ref_marked, model.adata.obs["cell_type"].astype(str).to_numpy())
    assert "unknown" not in set(qm.predict())  # scvi-tools' default: every cell gets a class
    with pytest.raises(InvalidParameterError, match="soft"):
        qm.predict(soft=True, unknown_threshold="auto")
    with pytest.raises(InvalidParameterError, match="auto"):
        qm.predict(unknown_threshold="high")


def test_calibration_is_saved_with_the_model(left_out, tmp_path):
    model, query, _ = left_out
    model.calibrate()
    assert model.temperature_ != 1.0
    soft = model.predict(soft=True)
    scores = model.unknown_score()
    for kind in ("folder", "archive"):
        path = tmp_path / ("m.zip" if kind == "archive" else "m")
        model.save(path, archive=kind == "archive")
        loaded = SCANVI.load(path, adata=model.adata)
        assert loaded.temperature_ == pytest.approx(model.temperature_)
        pd.testing.assert_frame_equal(loaded.predict(soft=True), soft, atol=1e-6, rtol=1e-5)
        np.testing.assert_allclose(loaded.unknown_score(), scores, rtol=1e-5, atol=1e-5)
        assert loaded.unknown_detector_["thresholds"] == model.unknown_detector_["thresholds"]
    qm = SCANVI.load_query_data(query.copy(), str(tmp_path / "m"))  # from the saved folder
    assert qm.temperature_ == pytest.approx(model.temperature_)
    assert qm.unknown_detector_["thresholds"] == model.unknown_detector_["thresholds"]
    uncalibrated = SCANVI.load(tmp_path / "m", adata=model.adata)
    del uncalibrated.temperature_
    assert not np.allclose(uncalibrated.predict(soft=True).to_numpy(), soft.to_numpy())


def test_integrated_gradients_completeness(left_out):
    """The attributions of a cell sum to logit(x) - logit(0) of its predicted class (completeness)."""
    import torch

    from cellvi.module.attribution import integrated_gradients

    model, _, _ = left_out
    batch = next(model._batches(indices=np.arange(40)))
    with torch.no_grad():
        logits, zero = model.module.classify(batch), model.module.classify({**batch, "X": batch["X"] * 0})
    target = logits.argmax(1)
    with torch.enable_grad():
        attrs = integrated_gradients(model.module.classify, batch, target, n_steps=128)
    rows = torch.arange(40)
    gap = (logits[rows, target] - zero[rows, target]).numpy()
    np.testing.assert_allclose(attrs.sum(1).numpy(), gap, rtol=0, atol=0.05 * np.abs(gap).mean())
    labels, table = model.predict(indices=np.arange(40), ig_interpretability=True, ig_args={"n_steps": 16})
    assert len(labels) == 40 and len(table) == model.adata.n_vars and (table["cells"] == 40).all()
    assert table["attribution_mean"].is_monotonic_decreasing
    assert set(table["feature"]) == set(model.adata.var_names)
    with pytest.raises(InvalidParameterError, match="n_steps"):
        model.predict(ig_interpretability=True, ig_args={"baselines": 1})
