import pytest

import cellvi
from cellvi.errors import InvalidParameterError
from cellvi.model._schedules import resolve_schedule


def test_scvi_tools_schedule_is_scvi_tools_heuristic_and_keeps_the_callers_plan():
    assert resolve_schedule("scvi-tools", 18_000, None, None) == (400, {})
    assert resolve_schedule("scvi-tools", 200_000, None, {"lr": 1e-2}) == (40, {"lr": 1e-2})
    assert resolve_schedule("scvi-tools", 5_000, 7, None) == (7, {})


def test_fast_schedule_settings_and_overrides():
    epochs, plan = resolve_schedule("fast", 20_000, None, None)
    assert epochs == 50 and plan["n_epochs_kl_warmup"] == 25
    assert (plan["lr"], plan["lr_schedule"]) == (2e-3, "warmup_cosine")
    assert resolve_schedule("fast", 200_000, None, None)[0] == 5  # 40 / 8
    epochs, plan = resolve_schedule("fast", 20_000, 12, {"lr": 1e-3, "n_epochs_kl_warmup": 3})
    assert epochs == 12 and plan["lr"] == 1e-3 and plan["n_epochs_kl_warmup"] == 3  # the caller's settings win
    with pytest.raises(InvalidParameterError):
        resolve_schedule("quick", 20_000, None, None)


def test_train_honours_schedule_fast(small_adata):
    cellvi.model.SCVI.setup_anndata(small_adata, batch_key="batch")
    cellvi.settings.seed = 0
    model = cellvi.model.SCVI(small_adata, n_hidden=16, n_latent=4)
    model.train(schedule="fast", batch_size=100, enable_progress_bar=False)
    h = model.history
    assert len(h) == 50  # 400 cells: scvi-tools' 400 epochs / 8
    assert h["kl_weight"].iloc[24] < 1.0 and h["kl_weight"].iloc[25] == 1.0  # warmed up over 25 epochs
    assert h["lr"].max() == pytest.approx(2e-3, rel=1e-2) and h["lr"].iloc[-1] == pytest.approx(2e-5)
    with pytest.raises(InvalidParameterError):
        model.train(max_epochs=1, schedule="quick")


def test_scanvi_refuses_the_fast_schedule(small_adata):
    cellvi.model.SCANVI.setup_anndata(small_adata, labels_key="cell_type", unlabeled_category="Unknown")
    model = cellvi.model.SCANVI(small_adata)
    with pytest.raises(InvalidParameterError, match="SCANVI"):
        model.train(max_epochs=1, schedule="fast")
