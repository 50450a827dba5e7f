"""SCANVI: setup of labels, semi-supervised training, prediction, initialisation from SCVI, save/load."""

import numpy as np
import pandas as pd
import pytest
import torch
from tests.train.test_compiled import train_compiled

import cellvi
from cellvi.errors import InvalidDataError, InvalidParameterError, MissingKeyError
from cellvi.model import SCANVI, SCVI


def _hide_labels(adata, fraction=0.3, seed=0):
    """labels column: the cell type, with a fraction of cells set to "Unknown"."""
    rng = np.random.default_rng(seed)
    labels = adata.obs["cell_type"].astype(str).to_numpy().copy()
    hidden = rng.random(adata.n_obs) < fraction
    labels[hidden] = "Unknown"
    adata.obs["labels"] = labels
    return hidden


def test_unlabeled_and_unused_categories_are_not_classes(small_adata):
    _hide_labels(small_adata)
    # a categorical dtype with a category no cell has, listed first
    small_adata.obs["labels"] = pd.Categorical(
        small_adata.obs["labels"], categories=["ghost", "Unknown", "type0", "type1", "type2"]
    )
    SCANVI.setup_anndata(small_adata, labels_key="labels", unlabeled_category="Unknown", batch_key="batch")
    model = SCANVI(small_adata, n_hidden=32, n_latent=4)
    assert model.classes_ == ["type0", "type1", "type2"]
    model.train(max_epochs=2)
    soft = model.predict(soft=True)
    assert list(soft.columns) == ["type0", "type1", "type2"]
    assert set(model.predict()) <= {"type0", "type1", "type2"}


def test_setup_errors(small_adata):
    small_adata.obs["labels"] = "Unknown"
    with pytest.raises(InvalidDataError, match="labelled"):
        SCANVI.setup_anndata(small_adata, labels_key="labels", unlabeled_category="Unknown")
    with pytest.raises(MissingKeyError):
        SCANVI.setup_anndata(small_adata, labels_key="nope", unlabeled_category="Unknown")


def test_train_predict_and_outputs(small_adata):
    hidden = _hide_labels(small_adata)
    before = small_adata.obs["labels"].copy()
    SCANVI.setup_anndata(small_adata, labels_key="labels", unlabeled_category="Unknown", batch_key="batch")
    model = SCANVI(small_adata, n_latent=5)
    model.train(max_epochs=40, n_samples_per_label=50, plan_kwargs={"classification_ratio": 50})
    assert np.isfinite(model.history["elbo_train"]).all()
    # per epoch, as scvi-tools: classification loss and accuracy on the labelled cells
    accuracy = model.history_["train_accuracy"]["train_accuracy"]
    assert ((accuracy >= 0) & (accuracy <= 1)).all() and accuracy.iloc[-1] > accuracy.iloc[0]
    assert (model.history["train_classification_loss"] > 0).all()
    assert model.history["train_calibration_error"].between(0, 1).all()
    soft = model.predict(soft=True)
    np.testing.assert_allclose(soft.to_numpy().sum(1), 1.0, rtol=1e-5)
    hard = model.predict(keep_observed=True)
    assert hard.shape == (small_adata.n_obs,)
    np.testing.assert_array_equal(model.predict(), soft.columns.to_numpy()[soft.to_numpy().argmax(1)])
    # labelled cells keep their observed label (unless asked), and the data's labels are left as they were
    np.testing.assert_array_equal(hard[~hidden], before.to_numpy()[~hidden])
    guess = model.predict()  # scvi-tools' default: the classifier for every cell
    np.testing.assert_array_equal(guess[hidden], hard[hidden])
    pd.testing.assert_series_equal(small_adata.obs["labels"], before)
    # the unlabelled cells are predicted far better than chance (3 balanced-ish types: 0.33). On this
    # tiny set (105 hidden cells, 40 epochs) seeds 0-3 give 0.79-0.87, so the bar sits below that spread
    truth = small_adata.obs["cell_type"].astype(str).to_numpy()
    assert np.mean(hard[hidden] == truth[hidden]) > 0.7
    latent = model.get_latent_representation()
    assert latent.shape == (small_adata.n_obs, 5)
    assert "X_scanvi" in small_adata.obsm
    assert np.isfinite(model.get_elbo())


def test_from_scvi_model_copies_weights(small_adata):
    _hide_labels(small_adata)
    SCVI.setup_anndata(small_adata, batch_key="batch")
    vae = SCVI(small_adata, n_hidden=32, n_latent=4)
    with pytest.raises(InvalidParameterError, match="trained"):
        SCANVI.from_scvi_model(vae, "Unknown", labels_key="labels")
    vae.train(max_epochs=3)
    with pytest.raises(MissingKeyError):
        SCANVI.from_scvi_model(vae, "Unknown")
    model = SCANVI.from_scvi_model(vae, "Unknown", labels_key="labels", linear_classifier=True)
    assert model.init_params["n_latent"] == 4 and model.init_params["linear_classifier"]
    for name, value in vae.module.state_dict().items():
        torch.testing.assert_close(model.module.state_dict()[name], value)
    np.testing.assert_allclose(
        model.get_latent_representation(obsm_key=None), vae.get_latent_representation(obsm_key=None), atol=1e-6
    )
    model.train()  # pretrained: a few epochs by default
    assert 2 <= len(model.history) <= 10


def test_save_load_roundtrip(small_adata, tmp_path):
    _hide_labels(small_adata)
    SCANVI.setup_anndata(small_adata, labels_key="labels", unlabeled_category="Unknown", batch_key="batch")
    model = SCANVI(small_adata, n_hidden=32, n_latent=4, dispersion="gene-label")
    model.train(max_epochs=3)
    model.save(tmp_path / "m")
    loaded = SCANVI.load(tmp_path / "m", adata=small_adata)
    pd.testing.assert_frame_equal(loaded.predict(soft=True), model.predict(soft=True))
    with pytest.raises(cellvi.errors.ModelFileError):
        SCVI.load(tmp_path / "m", adata=small_adata)


def test_labels_in_bound_false_averages_y_for_labelled_cells_too(small_adata):
    """``labels_in_bound=False`` (scvi-tools 1.4.2's bound): a labelled cell's bound averages y under the
    classifier exactly as an unlabelled cell's does, and its label enters through the classification loss
    only. With the default, labelled cells use their observed y, which gives another loss."""
    from cellvi.data import MinibatchLoader

    _hide_labels(small_adata)
    SCANVI.setup_anndata(small_adata, labels_key="labels", unlabeled_category="Unknown", batch_key="batch")
    model = SCANVI(small_adata, n_latent=4, n_hidden=32)
    module = model.module
    batch = MinibatchLoader(model._cell_data(), batch_size=64).batch(np.arange(64))
    labelled = batch["labels"] < module.n_labels
    assert labelled.any() and not labelled.all()
    hidden = dict(batch, labels=torch.full_like(batch["labels"], module.n_labels))

    def loss(b, **kw):
        torch.manual_seed(0)  # the same z draw and dropout masks for each call
        return module.loss(b, kl_weight=0.5, **kw)

    averaged = loss(batch, labels_in_bound=False)
    unlabelled = loss(hidden)  # the same bound, no classification loss (no labelled cell)
    assert float(averaged["classification_loss"]) > 0 and float(unlabelled["classification_loss"]) == 0
    torch.testing.assert_close(averaged["kl_z"], unlabelled["kl_z"])
    torch.testing.assert_close(averaged["loss"], unlabelled["loss"] + 50.0 * averaged["classification_loss"])
    observed = loss(batch)
    torch.testing.assert_close(observed["kl_z"][~labelled], averaged["kl_z"][~labelled])
    assert not torch.allclose(observed["kl_z"][labelled], averaged["kl_z"][labelled])
    model.train(max_epochs=2, plan_kwargs={"labels_in_bound": False})
    assert np.isfinite(model.history["elbo_train"]).all()


def test_classification_terms_equal_their_row_selecting_definitions(small_adata):
    """The classification loss and the calibration bins are computed without selecting the labelled rows
    (so that the compiled step stays one graph); they must equal the definitions that select them."""
    from cellvi.data import MinibatchLoader
    from cellvi.module.scanvae import CALIBRATION_BINS

    _hide_labels(small_adata)
    SCANVI.setup_anndata(small_adata, labels_key="labels", unlabeled_category="Unknown", batch_key="batch")
    model = SCANVI(small_adata, n_latent=4, n_hidden=32)
    module = model.module.eval()  # no dropout: the classifier's logits below are the loss's
    batch = MinibatchLoader(model._cell_data(), batch_size=64).batch(np.arange(64))
    labels = batch["labels"].reshape(-1)
    labelled = labels < module.n_labels
    logits = torch.randn(64, module.n_labels, requires_grad=True)
    weights = torch.tensor([0.5, 2.0, 1.0])[: module.n_labels]
    for w in (None, weights):
        got = module.classification_loss(logits, labels, w)
        want = torch.nn.functional.cross_entropy(logits[labelled], labels[labelled], weight=w)
        torch.testing.assert_close(got, want)
        g_got, g_want = (torch.autograd.grad(v, logits)[0] for v in (got, want))
        torch.testing.assert_close(g_got, g_want)
    none = torch.full_like(labels, module.n_labels)
    no_labels = module.classification_loss(logits, none)  # 0, and so is its gradient, also scaled up
    assert float(no_labels) == 0.0
    assert (torch.autograd.grad(50.0 * no_labels, logits)[0] == 0).all()
    out = module.loss(batch)
    logits = module._logits(module.inference(batch))
    conf, pred = torch.softmax(logits.detach(), -1).max(-1)
    bins = torch.clamp((conf * CALIBRATION_BINS).long(), max=CALIBRATION_BINS - 1)[labelled]
    want = [
        torch.bincount(bins, minlength=CALIBRATION_BINS).float(),
        torch.bincount(bins, weights=conf[labelled], minlength=CALIBRATION_BINS),
        torch.bincount(bins, weights=(pred == labels)[labelled].float(), minlength=CALIBRATION_BINS),
    ]
    torch.testing.assert_close(out["calibration_bins"], torch.stack(want))


def test_compiled_scanvi_training_is_reproducible(small_adata):
    """scANVI compiles long runs by default: with a fixed seed two compiled trainings give the same bits
    (no scatter-add with atomic operations in its step, whose order would differ between runs)."""
    _hide_labels(small_adata)
    results = []
    for _ in range(2):
        cellvi.settings.seed = 0
        a = small_adata.copy()
        SCANVI.setup_anndata(a, labels_key="labels", unlabeled_category="Unknown", batch_key="batch")
        model = SCANVI(a, n_latent=4, n_hidden=32)
        train_compiled(model, max_epochs=3, n_samples_per_label=40)
        results.append((model.get_latent_representation(), model.predict(soft=True).to_numpy()))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_compiled_scanvi_step_is_one_graph(small_adata):
    """No graph break in scANVI's compiled training step: each break is another graph to compile and a
    return to Python in every step."""
    from torch._dynamo.utils import counters

    _hide_labels(small_adata)
    SCANVI.setup_anndata(small_adata, labels_key="labels", unlabeled_category="Unknown", batch_key="batch")
    model = SCANVI(small_adata, n_latent=4, n_hidden=32)
    torch._dynamo.reset()
    counters.clear()
    train_compiled(model, max_epochs=2)
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == 1 and not counters["recompiles"]
    assert (model.history["train_classification_loss"] > 0).all()
