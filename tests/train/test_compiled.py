"""The compiled training step (``train(fused_kernels=True)``): same loss and gradients as eager, and a
clean fallback where compilation fails."""

import warnings

import numpy as np
import pytest
import torch

import cellvi
from cellvi.data.loaders import MinibatchLoader
from cellvi.train.compiled import CompiledLoss


def train_compiled(model, **train_kwargs) -> None:
    """``model.train(fused_kernels=True, ...)``, skipping the test where torch.compile is not available:
    a fallback to eager (announced by a RuntimeWarning) would not test the compiled step."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        try:
            model.train(fused_kernels=True, **train_kwargs)
        except RuntimeWarning as exc:
            pytest.skip(f"torch.compile is not available here: {exc}")


def _module_and_batch(small_adata):
    cellvi.model.SCVI.setup_anndata(small_adata, batch_key="batch")
    model = cellvi.model.SCVI(small_adata, n_latent=5, n_hidden=32, dropout_rate=0.0)
    loader = MinibatchLoader(model._cell_data(), np.arange(small_adata.n_obs), batch_size=100, shuffle=False)
    return model.module, next(iter(loader))


def _grads(module):
    return [p.grad.clone() for p in module.parameters() if p.grad is not None]


def test_compiled_step_equals_eager(small_adata):
    import torch._inductor.config as inductor_config

    with inductor_config.patch(fallback_random=True):  # the same z samples as eager
        _check_compiled_step_equals_eager(small_adata)


def _check_compiled_step_equals_eager(small_adata):
    module, batch = _module_and_batch(small_adata)
    module.train()
    opt = torch.optim.Adam(module.parameters())
    state = {k: v.clone() for k, v in module.state_dict().items()}  # batch-norm statistics move per step
    compiled = CompiledLoss(module.loss)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback would hide the compiled path
        try:
            torch.manual_seed(0)
            out_c = compiled.step(opt, batch, kl_weight=0.5)
        except RuntimeWarning as exc:
            pytest.skip(f"torch.compile is not available here: {exc}")
    grads_c = _grads(module)
    module.load_state_dict(state)
    torch.manual_seed(0)
    out_e = module.loss(batch, kl_weight=0.5)
    opt.zero_grad(set_to_none=True)
    out_e["loss"].backward()
    # float32 sums in another order: the loss (a sum over cells and genes) and each gradient agree up to
    # a small fraction of their size. Gradients are compared as whole tensors, by the norm of the
    # difference: entrywise bounds scaled by the largest entry failed on one thread, where a few entries
    # summed in another order differed by 3x that bound. Measured on an AMD EPYC, one thread: loss 6e-6
    # of itself, gradients at most 6e-5 of their norm; the biases before batch norm have gradients of
    # ~1e-6 (zero in exact arithmetic), hence the absolute 1e-5. A wrong derivative is off by O(1).
    torch.testing.assert_close(out_c["loss"], out_e["loss"], rtol=5e-5, atol=1e-4)
    assert len(grads_c) == len(_grads(module))
    for a, b in zip(grads_c, _grads(module)):
        assert a.shape == b.shape
        assert float((a - b).norm()) <= 2e-4 * float(b.norm()) + 1e-5, (tuple(a.shape), float((a - b).norm()))


def test_failed_compilation_falls_back_to_eager(small_adata, monkeypatch):
    def broken_compile(fn, **kwargs):
        def call(*args, **kw):
            raise RuntimeError("no C++ compiler")

        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    cellvi.model.SCVI.setup_anndata(small_adata, batch_key="batch")
    model = cellvi.model.SCVI(small_adata, n_latent=5, n_hidden=32)
    with pytest.warns(RuntimeWarning, match="without compiling"):
        model.train(max_epochs=2, fused_kernels=True)
    assert np.isfinite(model.history["elbo_train"]).all() and len(model.history) == 2


def test_errors_of_the_loss_itself_are_still_raised(small_adata, monkeypatch):
    module, batch = _module_and_batch(small_adata)
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)  # "compiled" = eager, to reach the loss
    compiled = CompiledLoss(module.loss)
    bad = {**batch, "batch": batch["batch"] + 50}  # a batch code out of range
    with pytest.warns(RuntimeWarning), pytest.raises(IndexError):
        compiled.step(torch.optim.Adam(module.parameters()), bad)


def test_compiled_training_is_reproducible(small_adata):
    latents = []
    for _ in range(2):
        cellvi.settings.seed = 0
        a = small_adata.copy()
        cellvi.model.SCVI.setup_anndata(a, batch_key="batch")
        model = cellvi.model.SCVI(a, n_latent=5, n_hidden=32)
        train_compiled(model, max_epochs=3)
        latents.append(model.get_latent_representation())
    np.testing.assert_array_equal(latents[0], latents[1])


def test_compiled_training_is_identical_across_processes():
    """Atomic adds in compiled code would give every process other bits (seen before the loss was
    written without scatter-adds); two processes on 2 threads must train the same model."""
    from tests.reliability.test_checkpoints import worker_result

    env = {"OMP_NUM_THREADS": "2", "CELLVI_TEST_THREADS": "2"}
    a, b = (worker_result("--fused", env_extra={**env, "PYTHONHASHSEED": seed}) for seed in ("1", "2"))
    if not a["compiled"]:
        pytest.skip("torch.compile is not available here (training fell back to eager)")
    assert a["latent_sha256"] == b["latent_sha256"] and a["history"] == b["history"]


def test_the_step_is_traced_once_and_its_graphs_can_be_cached(small_adata):
    """The KL weight changes every step and batch norm reads its eps: neither may make the compiler
    trace the step again (a restart or a recompilation, seconds each on wide data), and the traced
    forward and backward graphs must be cacheable on disk (no bypass of the autograd cache)."""
    from torch._dynamo.utils import counters

    cellvi.model.SCVI.setup_anndata(small_adata, batch_key="batch")
    model = cellvi.model.SCVI(small_adata, n_latent=5, n_hidden=32)
    torch._dynamo.reset()
    counters.clear()
    # 3 epochs of KL warm-up over 2: a different KL weight in every epoch, then a constant one
    train_compiled(model, max_epochs=3, plan_kwargs={"n_epochs_kl_warmup": 2})
    assert len(set(model.history["kl_weight"])) == 3
    assert counters["frames"]["total"] == 1 and counters["stats"]["unique_graphs"] == 1
    assert counters["aot_autograd"]["total"] == 1  # traced once: no restart
    assert not counters["graph_break"] and not counters["recompiles"]
    assert counters["aot_autograd"]["autograd_cache_bypass"] == 0
