"""``train(precision="bf16-mixed")``: the training steps' matrix products in bfloat16 under autocast, with
the weights, gradients, likelihood, validation and outputs in float32."""

import warnings

import numpy as np
import pytest
import torch

import cellvi
from cellvi.data.loaders import MinibatchLoader
from cellvi.errors import InvalidParameterError
from cellvi.train.compiled import CompiledLoss, forward_backward


def _module_and_batch(adata, **model_kwargs):
    cellvi.model.SCVI.setup_anndata(adata, batch_key="batch")
    model = cellvi.model.SCVI(adata, n_latent=5, n_hidden=32, dropout_rate=0.0, **model_kwargs)
    loader = MinibatchLoader(model._cell_data(), np.arange(adata.n_obs), batch_size=128, shuffle=False)
    return model.module, next(iter(loader))


def _step(module, batch, dtype, loss_fn=None):
    """Loss dict and gradients of one step from fixed weights and fixed z noise."""
    module.train()
    state = {k: v.clone() for k, v in module.state_dict().items()}
    opt = torch.optim.Adam(module.parameters())
    torch.manual_seed(0)
    out = forward_backward(loss_fn or module.loss, opt, batch, dtype)
    grads = [p.grad.clone() for p in module.parameters() if p.grad is not None]
    module.load_state_dict(state)
    return out, grads


@pytest.mark.parametrize("likelihood", ["zinb", "nb"])
def test_bf16_step_is_close_to_float32(small_adata, likelihood):
    module, batch = _module_and_batch(small_adata, gene_likelihood=likelihood)
    full, g_full = _step(module, batch, None)
    half, g_half = _step(module, batch, torch.bfloat16)
    for key in ("loss", "reconstruction_loss", "kl_z"):
        assert half[key].dtype == torch.float32, key  # the likelihood and the KL are never bfloat16
    assert all(g.dtype == torch.float32 for g in g_half)
    assert not torch.equal(half["loss"], full["loss"])  # the autocast really ran in bfloat16
    assert torch.allclose(half["loss"], full["loss"], rtol=1e-2)
    _assert_grads_close(g_full, g_half)


def _assert_grads_close(reference, other):
    """All gradients together within 2% (relative norm of the difference; measured ~0.7%), and each
    parameter's within 20% (measured up to ~12%, in the encoder, whose gradient passes through every
    bfloat16 product). Skipped per parameter: gradients below 1% of the largest, such as a linear
    layer's bias before batch norm, zero in exact arithmetic and round-off in either precision."""
    a, b = torch.cat([g.flatten() for g in reference]), torch.cat([g.flatten() for g in other])
    assert float((a - b).norm() / a.norm()) < 0.02
    largest = max(float(g.norm()) for g in reference)
    for x, y in zip(reference, other):
        if float(x.norm()) >= 0.01 * largest:
            assert float((x - y).norm() / x.norm()) < 0.2, (float(x.norm()), float((x - y).norm()))


def test_compiled_bf16_step_matches_eager_bf16(small_adata):
    import torch._inductor.config as inductor_config

    module, batch = _module_and_batch(small_adata)
    eager, g_eager = _step(module, batch, torch.bfloat16)
    compiled = CompiledLoss(module.loss)
    with inductor_config.patch(fallback_random=True), warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback to eager would hide the compiled path
        module.train()
        opt = torch.optim.Adam(module.parameters())
        torch.manual_seed(0)
        out = compiled.step(opt, batch, torch.bfloat16)
        g_comp = [p.grad.clone() for p in module.parameters() if p.grad is not None]
    assert compiled.compiled is not None
    assert torch.allclose(out["loss"], eager["loss"], rtol=1e-2)
    _assert_grads_close(g_eager, g_comp)


def test_train_bf16_mixed_end_to_end(small_adata):
    elbos = {}
    for precision in ("32-true", "bf16-mixed"):
        cellvi.settings.seed = 3
        cellvi.model.SCVI.setup_anndata(small_adata, batch_key="batch")
        model = cellvi.model.SCVI(small_adata, n_latent=5, n_hidden=32)
        model.train(max_epochs=30, precision=precision, check_val_every_n_epoch=10, enable_progress_bar=False)
        assert all(p.dtype == torch.float32 for p in model.module.parameters())
        latent = model.get_latent_representation()
        assert latent.dtype == np.float32 and np.isfinite(latent).all()
        elbos[precision] = model.history["elbo_validation"].dropna().to_numpy()
        assert elbos[precision][-1] < elbos[precision][0]  # it learned
    # trained the same way, the held-out ELBO ends within 1% of float32's
    assert abs(elbos["bf16-mixed"][-1] - elbos["32-true"][-1]) < 0.01 * abs(elbos["32-true"][-1])


def test_unsupported_precisions_are_refused_before_training(small_adata):
    cellvi.model.SCVI.setup_anndata(small_adata, batch_key="batch")
    model = cellvi.model.SCVI(small_adata, n_latent=3, n_hidden=16)
    for bad in ("16-mixed", "bf16-true", "64", 16):
        with pytest.raises(InvalidParameterError, match="precision"):
            model.train(max_epochs=1, precision=bad)
    assert not model.is_trained and len(model.history) == 0


def test_bf16_warns_on_a_cpu_without_bfloat16_instructions(small_adata, monkeypatch):
    from cellvi.model import _train_kwargs

    monkeypatch.setattr(_train_kwargs, "_cpu_has_bf16", lambda: False)
    cellvi.model.SCVI.setup_anndata(small_adata, batch_key="batch")
    model = cellvi.model.SCVI(small_adata, n_latent=3, n_hidden=16)
    with pytest.warns(UserWarning, match="emulated"):
        model.train(max_epochs=1, precision="bf16-mixed", enable_progress_bar=False)
    assert model.is_trained
