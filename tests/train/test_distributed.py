"""Data-parallel training and inference (issue #18): 2 processes on CPU with gloo, launched by torchrun.

The expensive part, one torchrun launch of ``_distributed_worker.py`` (with a SIGKILLed worker and its
restart), runs once per module; each test checks one claim on what the ranks recorded.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch

import cellvi
from cellvi.data import CellData
from cellvi.data.loaders import MinibatchLoader
from cellvi.data.ondisk import OnDiskLoader
from cellvi.errors import InvalidParameterError
from cellvi.train import distributed

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import _distributed_worker as worker  # noqa: E402 (after the path above)

N_CELLS = 2000
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Launch the worker on 2 processes (``--max-restarts 1``) and read what each rank recorded."""
    root = tmp_path_factory.mktemp("distributed")
    data = root / "data.h5ad"
    cellvi.data.simulate(n_cells=N_CELLS, n_genes=100, n_batches=2, n_cell_types=3, seed=1).write_h5ad(data)
    out = root / "out"
    out.mkdir()
    rc = distributed.launch([str(HERE / "_distributed_worker.py"), str(data), str(out)], nproc=2, max_restarts=1)
    assert rc == 0, "torchrun failed (its output is above)"
    ranks = [json.loads((out / f"rank_{k}.json").read_text()) for k in range(2)]
    epochs = [[json.loads(line) for line in (out / f"epochs_{k}.jsonl").read_text().splitlines()] for k in range(2)]
    return {"data": data, "out": out, "ranks": ranks, "epochs": epochs}


@pytest.fixture(scope="module")
def single(run):
    """The same training in one process, at the same global batch size, epochs and (rank 0's) seed."""
    cellvi.settings.seed = 100
    adata = ad.read_h5ad(run["data"])
    cellvi.model.SCVI.setup_anndata(adata, batch_key="batch")
    model = cellvi.model.SCVI(adata, **worker.MODEL)
    model.train(max_epochs=worker.EPOCHS, batch_size=worker.BATCH)
    return adata, model


def _history(rec: dict, key: str = "history") -> dict:
    return {k: v for k, v in rec[key].items() if k != "epoch_end_s"}  # wall times differ


def test_ranks_with_different_seeds_end_with_identical_weights(run):
    r0, r1 = run["ranks"]
    assert r0["initial"] != r1["initial"]  # seeds 100 and 101: different initial weights
    assert r0["final"] == r1["final"]  # weights and batch-norm statistics, bit for bit
    assert _history(r0) == _history(r1)


def test_shards_are_disjoint_cover_the_cells_and_take_the_same_steps():
    n = 1003
    X = np.ones((n, 3), np.float32)
    X[:, 0] = np.arange(n)  # each minibatch's X[:, 0] says which cells it holds
    data = CellData(X, np.zeros(n, np.int32), np.zeros(n, np.int32))
    idx = np.arange(n)
    for epoch in (0, 1):
        one = MinibatchLoader(data, idx, 64, shuffle=True, seed=5)
        one.set_epoch(epoch)
        global_batches = list(_cells(one))
        shards = []
        for k in range(2):
            loader = MinibatchLoader(data, idx, 64, shuffle=True, seed=5, shard_index=k, n_shards=2)
            loader.set_epoch(epoch)
            shards.append(list(_cells(loader)))
        assert len(shards[0]) == len(shards[1]) == len(one)  # the same number of steps on every rank
        for step, (a, b) in enumerate(zip(*shards)):
            assert not set(a) & set(b)
            assert abs(len(a) - len(b)) <= 1
            assert len(a) + len(b) == len(global_batches[step])  # together: one process's minibatch
        assert sorted(np.concatenate([np.concatenate(s) for s in shards]).tolist()) == list(range(n))
    with pytest.raises(InvalidParameterError, match="at least 2 per process"):
        MinibatchLoader(data, idx, 3, shard_index=0, n_shards=2)


def _cells(loader):
    for b in loader:
        yield b["X"][:, 0].numpy().astype(int)


def test_ondisk_shards_read_only_their_rows_and_take_the_same_steps(run):
    backed = ad.read_h5ad(run["data"], backed="r")
    cellvi.model.SCVI.setup_anndata(backed, batch_key="batch")
    data = cellvi.model.SCVI(backed, **worker.MODEL)._cell_data()
    idx = np.arange(0, 600, 2)
    loaders = [OnDiskLoader(data, idx, 32, True, 3, chunk_size=64, shard_index=k, n_shards=2) for k in range(2)]
    for epoch in (0, 1):
        parts = []
        for loader in loaders:
            loader.set_epoch(epoch)
            parts.append(np.concatenate(loader.shard_chunks()))
            assert sum(1 for _ in loader) == len(loader)
        assert len(loaders[0]) == len(loaders[1])
        assert not set(parts[0]) & set(parts[1]) and sorted(np.concatenate(parts)) == idx.tolist()
    # in the torchrun run: the rows each rank read from the backed file, training then inference
    o0, o1 = (r["ondisk"] for r in run["ranks"])
    assert not set(o0["train_rows"]) & set(o1["train_rows"])
    assert sorted(o0["train_rows"] + o1["train_rows"]) == list(range(N_CELLS))  # training + validation cells
    half = N_CELLS // 2
    assert o0["infer_rows"] == list(range(half)) and o1["infer_rows"] == list(range(half, N_CELLS))
    assert o0["n_latent_rows"] == o1["n_latent_rows"] == N_CELLS and o0["latent_sum"] == o1["latent_sum"]
    # bytes read from files while training (/proc/self/io rchar), against one process on the same file;
    # measured the second time: the first also reads the Python modules that training imports (~28 MB)
    worker._ondisk(str(run["data"]))
    alone = worker._ondisk(str(run["data"]))
    for o in (o0, o1):
        assert o["train_bytes"] < 0.7 * alone["train_bytes"], (o["train_bytes"], alone["train_bytes"])
        # setup_anndata: each rank checks its half of the file, the statistics are summed over ranks
        assert o["setup_bytes"] < 0.7 * alone["setup_bytes"], (o["setup_bytes"], alone["setup_bytes"])
        assert o["summary"].keys() == alone["summary"].keys()
        for key, value in alone["summary"].items():
            np.testing.assert_allclose(o["summary"][key], value, rtol=1e-9, err_msg=key)


def test_saved_model_loads_in_one_process_with_the_elbo_of_single_process_training(run, single):
    adata, reference = single
    r0 = run["ranks"][0]
    assert r0["validation"] == reference.validation_indices.tolist()  # one split, from rank 0's seed
    loaded = cellvi.model.SCVI.load(run["out"] / "model", adata)
    assert loaded.history.index.tolist() == list(range(worker.EPOCHS))
    torch.manual_seed(0)
    elbo_ddp = loaded.get_elbo(indices=reference.validation_indices)
    torch.manual_seed(0)
    elbo_one = reference.get_elbo(indices=reference.validation_indices)
    assert abs(elbo_ddp - elbo_one) <= 0.01 * abs(elbo_one), (elbo_ddp, elbo_one)


def test_killed_worker_is_restarted_and_resumes_from_the_checkpoint(run):
    for k, log in enumerate(run["epochs"]):
        first = [e["epoch"] for e in log if e["attempt"] == 0]
        second = [e["epoch"] for e in log if e["attempt"] == 1]
        assert first == list(range(worker.KILL_EPOCH + 1)), (k, first)  # rank 1 killed in epoch KILL_EPOCH
        # the checkpoint of epoch KILL_EPOCH - 1 was the last one written: training resumed after it
        assert second == list(range(worker.KILL_EPOCH, worker.EPOCHS)), (k, second)
        assert run["ranks"][k]["attempt"] == 1
        assert run["ranks"][k]["history"]["epoch"] == list(range(worker.EPOCHS))  # the whole history


def test_early_stopping_stops_every_rank_at_the_same_epoch(run):
    r0, r1 = run["ranks"]
    h0, h1 = _history(r0, "early_stopping"), _history(r1, "early_stopping")
    assert h0 == h1
    n = len(h0["epoch"])
    assert h0["epoch"] == list(range(n)) and n < 200
    best = int(np.argmin(h0["elbo_validation"]))  # the negative ELBO (scvi-tools sign)
    assert best == n - 1 - 2  # stopped after patience=2 epochs without improving on the summed metric


def test_distributed_inference_keeps_the_cell_order(run, single):
    adata, _ = single
    loaded = cellvi.model.SCVI.load(run["out"] / "model", adata)
    latent = loaded.get_latent_representation()
    expr = loaded.get_normalized_expression(return_numpy=True)
    for k in range(2):  # every rank got all cells, in order
        np.testing.assert_allclose(np.load(run["out"] / f"latent_{k}.npy"), latent, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.load(run["out"] / f"expr_{k}.npy"), expr, rtol=1e-5, atol=1e-8)
    written = ad.read_h5ad(run["out"] / "latent.h5ad")
    assert written.obs_names.tolist() == adata.obs_names.tolist()
    np.testing.assert_allclose(written.obsm["X_scvi"], latent, rtol=1e-5, atol=1e-5)


def test_scanvi_calibration_error_is_that_of_all_validation_cells(run, single):
    """The history's calibration error sums the confidence bins over ranks: it equals the expected
    calibration error of the saved classifier on all validation cells, computed in one process."""
    adata, _ = single
    r0, r1 = (r["scanvi"] for r in run["ranks"])
    assert _history(r0) == _history(r1)
    scanvi = cellvi.model.SCANVI.load(run["out"] / "scanvi", adata)
    ece = scanvi.calibrate(indices=r0["validation"])["ece_before"]  # the validation pass: posterior mean, eval
    assert ece > 0.01  # not trivially 0 (each rank's own bins over all cells give another value)
    np.testing.assert_allclose(r0["history"]["validation_calibration_error"][-1], ece, rtol=1e-3, atol=1e-4)
