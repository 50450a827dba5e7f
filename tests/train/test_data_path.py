"""The training data path: counts sent as CSR pieces and densified at the destination (the CUDA path, run
here on the CPU), read ahead in a thread, and the sparse first encoder layer. Each must train the model
that the dense path trains, and no training step may read a value back to the host."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import cellvi
from cellvi.data.loaders import MinibatchLoader
from cellvi.model import _data_path

GPU_PATH = {"sparse_counts": False, "csr_transfer": True, "read_ahead": 2}


def _train(adata, monkeypatch=None, path=None, epochs=3, batch_size=64, **train_kw):
    if path is not None:
        monkeypatch.setattr(_data_path, "training_data_path", lambda *a: dict(path))
    cellvi.settings.seed = 0
    cellvi.model.SCVI.setup_anndata(adata, batch_key="batch")
    model = cellvi.model.SCVI(adata, n_hidden=32, n_latent=5, encode_covariates=True, use_observed_lib_size=False)
    model.train(
        max_epochs=epochs,
        batch_size=batch_size,
        enable_progress_bar=False,
        check_val_every_n_epoch=1,
        fused_kernels=False,
        **train_kw,
    )
    return model


def _state(model):
    return {k: v.clone() for k, v in model.module.state_dict().items()}


def test_csr_transfer_and_read_ahead_train_the_dense_paths_model_bit_for_bit(small_adata, monkeypatch):
    dense = _train(small_adata)
    gpu_path = _train(small_adata, monkeypatch, GPU_PATH)
    assert dense.history.drop(columns="epoch_end_s").equals(gpu_path.history.drop(columns="epoch_end_s"))
    a, b = _state(dense), _state(gpu_path)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_csr_pieces_densify_to_the_hosts_minibatch(small_adata):
    cellvi.model.SCVI.setup_anndata(small_adata, batch_key="batch")
    data = cellvi.model.SCVI(small_adata)._cell_data()
    host = MinibatchLoader(data, batch_size=50, shuffle=True, seed=3)
    device = MinibatchLoader(data, batch_size=50, shuffle=True, seed=3, csr_transfer=True)
    for a, b in zip(host, device, strict=True):
        assert set(a) == set(b) and "X_csr" not in b
        assert torch.equal(a["X"], b["X"]) and torch.equal(a["log_factorial"], b["log_factorial"])
        assert all(torch.equal(x, y) for x, y in zip(a["nonzero"], b["nonzero"]))


@pytest.mark.parametrize("likelihood", ["zinb", "nb", "poisson"])
def test_sparse_first_layer_step_equals_the_dense_step_to_round_off(small_adata, likelihood):
    """One loss and its gradients, the same minibatch both ways: batch covariates injected into the first
    layer, a latent library (its encoder also reads the non-zeros), each likelihood."""
    cellvi.model.SCVI.setup_anndata(small_adata, batch_key="batch")
    model = cellvi.model.SCVI(
        small_adata, n_hidden=32, encode_covariates=True, use_observed_lib_size=False, gene_likelihood=likelihood
    )
    module = model.module.train()
    rows = np.arange(0, 400, 3)
    out, grads = {}, {}
    for sparse in (False, True):
        batch = MinibatchLoader(model._cell_data(), sparse_counts=sparse).batch(rows)
        assert ("X" in batch) != sparse and ("X_csc" in batch) == sparse
        module.zero_grad()
        torch.manual_seed(0)
        loss = module.loss(batch, kl_weight=0.5)
        loss["loss"].backward()
        out[sparse] = loss["reconstruction_loss"].detach()
        grads[sparse] = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    torch.testing.assert_close(out[True], out[False], rtol=1e-5, atol=1e-3)
    assert grads[True].keys() == grads[False].keys()
    for name in grads[False]:
        torch.testing.assert_close(grads[True][name], grads[False][name], rtol=1e-4, atol=1e-5, msg=name)


def test_sparse_first_layer_trains_the_same_model_to_round_off(small_adata):
    dense = _train(small_adata, sparse_first_layer=False)
    sparse = _train(small_adata, sparse_first_layer=True)
    cols = ["elbo_train", "elbo_validation", "reconstruction_loss_train"]
    np.testing.assert_allclose(sparse.history[cols].to_numpy(), dense.history[cols].to_numpy(), rtol=1e-5)
    a, b = _state(dense), _state(sparse)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)


def test_sparse_first_layer_is_chosen_by_width_and_density():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    wide_sparse = sp.random(10, 6_000, density=0.05, format="csr", random_state=0)
    wide_dense = sp.random(10, 6_000, density=0.4, format="csr", random_state=0)
    narrow = sp.random(10, 2_000, density=0.05, format="csr", random_state=0)
    choose = _data_path.training_data_path
    assert choose(cpu, wide_sparse, None)["sparse_counts"]
    assert not choose(cpu, wide_dense, None)["sparse_counts"] and not choose(cpu, narrow, None)["sparse_counts"]
    assert not choose(cpu, wide_sparse.toarray(), None)["sparse_counts"]  # density unknown: dense
    assert choose(cpu, narrow, True)["sparse_counts"] and not choose(cpu, wide_sparse, False)["sparse_counts"]
    assert choose(cuda, narrow, None)["csr_transfer"] and choose(cuda, narrow, None)["read_ahead"] > 0
    assert not choose(cpu, narrow, None)["csr_transfer"] and choose(cpu, narrow, None)["read_ahead"] == 0
    with pytest.raises(cellvi.errors.InvalidParameterError):
        choose(cpu, narrow, "yes")


def test_latent_after_more_training_uses_the_new_weights(small_adata):
    """The sparse first layer keeps the transposed weight while the weight is unchanged; fused Adam used to
    leave the weight's version counter as it was, so a second train() left the latent on the old weights."""
    model = _train(small_adata, epochs=1)
    model.get_latent_representation()  # caches the transposed weight
    model.train(max_epochs=1, enable_progress_bar=False)
    module = model.module.eval()
    loader = MinibatchLoader(model._cell_data(), batch_size=1024, likelihood_terms=False)
    expected = torch.cat([module.latent(b) for b in loader]).numpy()  # dense counts: no cache
    np.testing.assert_allclose(model.get_latent_representation(), expected, rtol=1e-4, atol=1e-5)


class _HostReads(TorchDispatchMode):
    """Counts the operations that read a tensor's values to the host (a device synchronisation on CUDA):
    scalar reads (item, float, int, bool) and the ops whose output size depends on the values."""

    READS = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2", "repeat_interleave"}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in self.READS and not (name == "repeat_interleave" and (kwargs or {}).get("output_size")):
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("path", [GPU_PATH, {"sparse_counts": True, "csr_transfer": False, "read_ahead": 0}])
def test_training_steps_read_nothing_back(small_adata, monkeypatch, path):
    """The host reads of a whole train() do not grow with the number of steps: per-step figures stay on the
    device and are read once per epoch. (Read-ahead is off here: a dispatch mode sees its own thread only.)"""
    path = {**path, "read_ahead": 0}
    counts = []
    reads = {"tolist": 0, "numpy": 0, "cpu": 0, "item": 0}
    for name in reads:  # Python-level reads that need not pass the dispatcher
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _name=name, _original=original, **k):
            reads[_name] += 1
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    for batch_size in (200, 40):  # 2 and 9 steps per epoch
        before = sum(reads.values())
        with _HostReads() as mode:
            _train(small_adata, monkeypatch, path, epochs=2, batch_size=batch_size)
        counts.append((mode.count, sum(reads.values()) - before))
    assert counts[0] == counts[1], counts
