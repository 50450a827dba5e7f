"""A loss that turns NaN or infinite stops training with an error naming the epoch and likely causes,
and the model keeps the weights of the last good epoch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cellvi
from cellvi.errors import CellviError, TrainingDivergedError
from cellvi.model import SCVI

from ._helpers import make_adata

STEPS_PER_EPOCH = 2  # 60 cells, train_size=1, batch_size=32


def _model():
    cellvi.settings.seed = 0
    a = make_adata()
    SCVI.setup_anndata(a, batch_key="batch")
    return SCVI(a, n_hidden=8, n_latent=3)


@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_nan_weights_stop_training_and_restore_last_good_epoch(poison):
    reference = _model()
    reference.train(max_epochs=2, batch_size=32, train_size=1.0)
    good = {k: v.clone() for k, v in reference.module.state_dict().items()}

    model = _model()
    calls = []

    def inject(module, args):  # in the first step of epoch 2, poison one weight
        calls.append(1)
        if len(calls) == 2 * STEPS_PER_EPOCH + 1:
            with torch.no_grad():
                model.module.z_encoder.mean.weight[0, 0] = poison

    model.module.z_encoder.register_forward_pre_hook(inject)
    with pytest.raises(TrainingDivergedError) as info:
        model.train(max_epochs=5, batch_size=32, train_size=1.0)
    err = info.value
    assert isinstance(err, CellviError) and isinstance(err, ValueError)
    msg = str(err)
    assert "epoch 2" in msg and "learning rate" in msg and "restored" in msg
    state = model.module.state_dict()
    for key, value in good.items():  # bit for bit the weights after epoch 1 (the last good one)
        torch.testing.assert_close(state[key], value, rtol=0, atol=0, equal_nan=False, msg=key)
    assert len(model.history) == 2 and np.isfinite(model.history["elbo_train"]).all()
    assert not model.is_trained


def test_huge_learning_rate_is_caught():
    model = _model()
    with pytest.raises(TrainingDivergedError, match="epoch"):
        model.train(max_epochs=50, batch_size=32, train_size=1.0, plan_kwargs={"lr": 1e8})
    assert all(torch.isfinite(v).all() for v in model.module.state_dict().values() if v.is_floating_point())
    latent = model.get_latent_representation()
    assert np.isfinite(latent).all()
