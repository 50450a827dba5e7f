"""SOLO doublet detection (scvi-tools' scvi.external.SOLO calls)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.metrics import roc_auc_score

import cellvi
import cellvi as scvi
from cellvi.errors import InvalidParameterError, MissingKeyError, NotSetUpError


def _with_doublets(n_cells=600, n_doublets=60, seed=0, n_batches=1):
    """Simulated counts where ``n_doublets`` cells were replaced by the sum of two cells of different
    types (true heterotypic doublets). Returns the AnnData and the (n_cells,) bool truth."""
    a = cellvi.data.simulate(n_cells=n_cells, n_genes=200, n_batches=n_batches, n_cell_types=5, seed=seed)
    rng = np.random.default_rng(seed + 1)
    X = a.X.toarray() if sp.issparse(a.X) else np.array(a.X)
    types = a.obs["cell_type"].astype(str).to_numpy()
    truth = np.zeros(n_cells, bool)
    truth[rng.choice(n_cells, n_doublets, replace=False)] = True
    for i in np.flatnonzero(truth):
        X[i] = X[i] + X[rng.choice(np.flatnonzero(types != types[i]))]
    a.X = sp.csr_matrix(X)
    return a, truth


def test_solo_finds_simulated_heterotypic_doublets():
    a, truth = _with_doublets()
    scvi.model.SCVI.setup_anndata(a)
    model = scvi.model.SCVI(a, n_hidden=64)
    model.train(max_epochs=60)
    solo = scvi.external.SOLO.from_scvi_model(model)
    assert "600 cells, 1200 simulated doublets" in repr(solo)
    solo.train(max_epochs=100)
    probs = solo.predict()
    assert list(probs.columns) == ["doublet", "singlet"] and list(probs.index) == list(a.obs_names)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    assert roc_auc_score(truth, probs["doublet"]) > 0.85  # measured 0.95 on 1,200 cells, 100 epochs
    labels = solo.predict(soft=False)
    assert set(labels) <= {"doublet", "singlet"} and (labels[truth] == "doublet").mean() > 0.5
    everything = solo.predict(include_simulated_doublets=True)
    assert len(everything) == 1800 and everything.index[-1] == "sim_doublet_1199"
    # the simulated doublets are what it learnt to recognise
    assert everything["doublet"].iloc[600:].mean() > everything["doublet"].iloc[:600].mean()
    # best validation epoch kept; seeded: the same again
    assert len(solo.history) <= 100 and {"train_loss", "validation_loss"} <= set(solo.history.columns)
    again = scvi.external.SOLO.from_scvi_model(model)
    again.train(max_epochs=100)
    np.testing.assert_array_equal(again.predict().to_numpy(), probs.to_numpy())


def test_solo_restricts_to_one_batch_and_checks_its_input():
    a, _ = _with_doublets(n_cells=300, n_doublets=10, n_batches=2)
    scvi.model.SCVI.setup_anndata(a, batch_key="batch")
    model = scvi.model.SCVI(a, n_hidden=16, n_latent=4)
    model.train(max_epochs=3)
    first = a.obs["batch"].astype(str).iloc[0]
    solo = scvi.external.SOLO.from_scvi_model(model, restrict_to_batch=first)
    n_first = int((a.obs["batch"].astype(str) == first).sum())
    assert len(solo.predict()) == n_first and len(solo.predict(include_simulated_doublets=True)) == 3 * n_first
    with pytest.warns(UserWarning, match="restrict_to_batch"):
        scvi.external.SOLO.from_scvi_model(model, doublet_ratio=1)
    with pytest.raises(MissingKeyError, match="no cells"):
        scvi.external.SOLO.from_scvi_model(model, restrict_to_batch="lane9")
    with pytest.raises(InvalidParameterError, match="doublet_ratio"):
        scvi.external.SOLO.from_scvi_model(model, restrict_to_batch=first, doublet_ratio=0)
    with pytest.raises(InvalidParameterError, match="unknown keywords"):
        solo.train(max_epochs=1, gradient_clip_val=1.0)
    with pytest.raises(NotSetUpError):
        scvi.external.SOLO(a)


def test_solo_save_and_load_give_the_same_predictions(tmp_path):
    a, _ = _with_doublets(n_cells=200, n_doublets=10)
    scvi.model.SCVI.setup_anndata(a)
    model = scvi.model.SCVI(a, n_hidden=16, n_latent=4)
    model.train(max_epochs=2)
    solo = scvi.external.SOLO.from_scvi_model(model, n_hidden=32, seed=3)
    solo.train(max_epochs=5)
    solo.save(tmp_path / "solo")
    back = scvi.external.SOLO.load(tmp_path / "solo")
    np.testing.assert_array_equal(back.predict().to_numpy(), solo.predict().to_numpy())
    assert (
        back.is_trained and len(back.history) == len(solo.history) and back.init_params == {"seed": 3, "n_hidden": 32}
    )
    model.save(tmp_path / "scvi")
    with pytest.raises(cellvi.errors.ModelFileError, match="not SOLO"):
        scvi.external.SOLO.load(tmp_path / "scvi")
    with pytest.raises(cellvi.errors.ModelFileError, match="already exists"):
        solo.save(tmp_path / "solo")


def test_solo_early_stopping_options():
    a, _ = _with_doublets(n_cells=200, n_doublets=10)
    scvi.model.SCVI.setup_anndata(a)
    model = scvi.model.SCVI(a, n_hidden=16, n_latent=4)
    model.train(max_epochs=2)
    solo = scvi.external.SOLO.from_scvi_model(model)
    solo.train(max_epochs=60, early_stopping_patience=1, early_stopping_min_delta=10.0)
    assert len(solo.history) == 2  # no epoch improves by 10 nats: stops after the patience of 1
    solo.train(max_epochs=60, early_stopping_patience=1, early_stopping_min_delta=10.0, early_stopping_warmup_epochs=7)
    assert len(solo.history) == 8
    solo.train(max_epochs=1, shuffle_set_split=False)
    assert solo.train_indices.max() < solo.validation_indices.min()


def test_solo_calls_few_real_cells_on_one_small_lane():
    """400 real PBMCs of one chemistry and their 800 simulated doublets: 9 steps an epoch. With batch
    norm's running statistics lagging (momentum 0.01) and the log library unscaled, the classifier
    evaluated at the class prior and called every real cell a doublet (AUROC 0.58); scvi-tools 1.4.2
    calls all of them too (its AUROC 0.95)."""
    import anndata as ad
    from tests.conftest import real_data_path

    a = ad.read_h5ad(real_data_path("pbmc_3chemistries.h5ad"))
    scvi.model.SCVI.setup_anndata(a, batch_key="batch")
    model = scvi.model.SCVI(a)
    model.train(max_epochs=100)
    solo = scvi.external.SOLO.from_scvi_model(model, restrict_to_batch="3pv1")
    solo.train()
    probs = solo.predict(include_simulated_doublets=True)["doublet"].to_numpy()
    simulated = solo.adata.obs["_solo_doub_sim"].to_numpy() == "doublet"
    assert roc_auc_score(simulated, probs) > 0.9
    assert (probs[~simulated] > 0.5).mean() < 0.3
