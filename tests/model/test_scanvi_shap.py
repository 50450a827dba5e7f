"""SCANVI.shap_predict: SHAP values of the soft predictions (optional ``shap`` library, cellvi[interpret])."""

import builtins

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import cellvi
from cellvi.errors import InvalidParameterError, MissingDependencyError
from cellvi.model import SCANVI


@pytest.fixture(scope="module")
def scanvi():
    cellvi.settings.seed = 0
    adata = cellvi.data.simulate(
        n_cells=150, n_genes=40, n_batches=1, n_cell_types=3, seed=4, de_lfc=2.0, de_fraction=0.2
    )
    adata.obs["labels"] = adata.obs["cell_type"].astype(str)
    SCANVI.setup_anndata(adata, labels_key="labels", unlabeled_category="Unknown")
    model = SCANVI(adata, n_latent=4)
    model.train(max_epochs=30, train_size=1.0, plan_kwargs={"classification_ratio": 50})
    return model


def test_shap_values_add_up_to_the_predictions_and_point_at_marker_genes(scanvi):
    pytest.importorskip("shap")
    adata = scanvi.adata
    cells = np.r_[0:6]
    values = scanvi.shap_predict(indices=cells, shap_args={"nsamples": 300})
    n_classes = len(scanvi.classes_)
    assert values.shape == (len(cells), adata.n_vars, n_classes)
    soft = scanvi.predict(soft=True).to_numpy()
    # efficiency: per cell and class, the values plus the background's mean prediction give the prediction
    np.testing.assert_allclose(values.sum(1) + soft.mean(0), soft[cells], atol=1e-4)
    # the genes that move the predictions most are the simulated DE genes (measured AUROC 0.87)
    importance = np.abs(values).sum(2).mean(0)
    assert roc_auc_score(adata.var["is_de"], importance) > 0.75


def test_shap_predict_without_shap_names_the_extra(scanvi, monkeypatch):
    real_import = builtins.__import__

    def no_shap(name, *args, **kwargs):
        if name == "shap" or name.startswith("shap."):
            raise ImportError("No module named 'shap'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_shap)
    with pytest.raises(MissingDependencyError, match=r"cellvi\[interpret\]"):
        scanvi.shap_predict(indices=[0])
    monkeypatch.undo()
    with pytest.raises(InvalidParameterError):
        scanvi.shap_predict(indices=[0], background_size=0)
