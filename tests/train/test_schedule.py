import math

import pytest
import torch

import cellvi
from cellvi.errors import InvalidParameterError
from cellvi.train.schedule import learning_rate


def test_warmup_cosine_rates_per_step():
    lr, total, warm = 4e-3, 1000, 100
    rates = [learning_rate("warmup_cosine", lr, s, total, warm, 0.01) for s in range(total)]
    assert rates[0] == pytest.approx(lr / warm)  # linear warm-up from lr / warmup_steps
    assert rates[warm - 1] == pytest.approx(lr) and rates[warm] == pytest.approx(lr)
    assert all(a < b for a, b in zip(rates[:warm], rates[1:warm]))  # rising during warm-up
    assert all(a >= b for a, b in zip(rates[warm:], rates[warm + 1 :]))  # then never rising
    mid = warm + (total - warm - 1) // 2
    assert rates[mid] == pytest.approx(
        lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * (mid - warm) / (total - warm - 1))))
    )
    assert rates[-1] == pytest.approx(0.01 * lr)  # the last step is at lr * lr_min_fraction
    assert learning_rate("warmup_cosine", lr, 5 * total, total, warm, 0.01) == pytest.approx(0.01 * lr)
    assert {learning_rate("constant", lr, s, total, warm, 0.01) for s in (0, 50, 999)} == {lr}  # scvi-tools'


def _trained(adata, plan_kwargs: dict):
    cellvi.settings.seed = 0
    model = cellvi.model.SCVI(adata, n_hidden=16, n_latent=4)
    before = [p.detach().clone() for p in model.module.parameters()]
    model.train(max_epochs=3, batch_size=100, plan_kwargs=plan_kwargs, enable_progress_bar=False, fused_kernels=False)
    moved = max(float((p.detach() - b).abs().max()) for p, b in zip(model.module.parameters(), before))
    return model, moved


def test_train_honours_the_schedule(small_adata):
    cellvi.model.SCVI.setup_anndata(small_adata, batch_key="batch")
    steps = 4  # 360 training cells in minibatches of 100: 4 steps per epoch (the last one 60 cells)
    plan = {"lr": 1e-2, "lr_schedule": "warmup_cosine", "lr_warmup_steps": 3, "lr_min_fraction": 0.1}
    model, _ = _trained(small_adata, plan)
    expected = [learning_rate("warmup_cosine", 1e-2, (e + 1) * steps - 1, 3 * steps, 3, 0.1) for e in range(3)]
    assert model.history["lr"].tolist() == pytest.approx(expected)
    assert model.history["lr"].iloc[-1] == pytest.approx(1e-3)
    constant, moved_constant = _trained(small_adata, {"lr": 1e-2})  # the default: scvi-tools' constant rate
    assert constant.history["lr"].tolist() == pytest.approx([1e-2] * 3)
    # the optimiser really takes the scheduled rate: a warm-up of 1e9 steps leaves the weights in place
    _, moved_tiny = _trained(small_adata, {"lr": 1e-2, "lr_schedule": "warmup_cosine", "lr_warmup_steps": 10**9})
    assert moved_constant > 1e-3 and moved_tiny < 1e-8


@pytest.mark.parametrize(
    "plan", [{"lr_schedule": "cosine"}, {"lr_warmup_steps": -1}, {"lr_min_fraction": 2.0}, {"lr_warmup_steps": 1.5}]
)
def test_bad_schedule_settings_are_refused(small_adata, plan):
    cellvi.model.SCVI.setup_anndata(small_adata)
    model = cellvi.model.SCVI(small_adata)
    with pytest.raises(InvalidParameterError):
        model.train(max_epochs=1, plan_kwargs=plan)
    assert not model.is_trained and torch.is_grad_enabled()
