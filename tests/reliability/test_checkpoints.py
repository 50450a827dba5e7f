"""Training survives interruption: a run killed with SIGKILL and resumed from its last checkpoint ends
exactly where an uninterrupted run ends (CPU, same seed); checkpoint writes are atomic."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cellvi.model import SCVI
from cellvi.train import checkpoint as ckpt

from ._helpers import make_adata

WORKER = Path(__file__).with_name("_worker.py")
EPOCHS = 6


def _worker(*args: str, env_extra: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.Popen(
        [sys.executable, str(WORKER), "--epochs", str(EPOCHS), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def worker_result(*args: str, env_extra: dict | None = None) -> dict:
    proc = _worker(*args, env_extra=env_extra)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    return json.loads(out.strip().splitlines()[-1])


def _checkpoint_epoch(directory: Path) -> int:
    try:
        state = ckpt.load_checkpoint(directory)
    except Exception:  # noqa: BLE001 - cannot happen with atomic writes, but never fail the poll on it
        return -1
    return -1 if state is None else int(state["epoch"])


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    directory = tmp_path / "ckpt"
    child = _worker("--checkpoint-dir", str(directory), "--slow", "0.05")
    deadline = time.monotonic() + 240
    while _checkpoint_epoch(directory) < 2:
        assert child.poll() is None, child.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "no checkpoint written in time"
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.communicate()
    assert child.returncode == -signal.SIGKILL
    killed_at = _checkpoint_epoch(directory)
    assert 2 <= killed_at < EPOCHS, "the run must be killed before it finished"

    resumed = worker_result("--checkpoint-dir", str(directory), "--resume")
    uninterrupted = worker_result()
    assert resumed["latent_sha256"] == uninterrupted["latent_sha256"]
    assert resumed["history"] == uninterrupted["history"]  # every float, bit for bit
    assert len(resumed["history"]) == EPOCHS
    assert _checkpoint_epoch(directory) == EPOCHS


def test_resume_without_checkpoint_starts_afresh(tmp_path):
    a = make_adata()
    SCVI.setup_anndata(a)
    model = SCVI(a, n_hidden=8, n_latent=3)
    model.train(max_epochs=2, batch_size=32, checkpoint_dir=str(tmp_path), checkpoint_every=1, resume=True)
    assert len(model.history) == 2 and _checkpoint_epoch(tmp_path) == 2


def test_checkpoint_holds_optimiser_and_rng_state(tmp_path):
    a = make_adata()
    SCVI.setup_anndata(a)
    model = SCVI(a, n_hidden=8, n_latent=3)
    model.train(max_epochs=3, batch_size=32, checkpoint_dir=str(tmp_path), checkpoint_every=2)
    state = ckpt.load_checkpoint(tmp_path)
    assert state["epoch"] == 2  # every 2 epochs: written after epoch 2, not after 3
    assert state["optimizer"]["state"] and state["step"] > 0
    assert isinstance(state["torch_rng"], torch.Tensor) and len(state["history"]) == 2


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    a = make_adata()
    SCVI.setup_anndata(a)
    model = SCVI(a, n_hidden=8, n_latent=3)
    model.train(max_epochs=1, batch_size=32, checkpoint_dir=str(tmp_path), checkpoint_every=1)
    before = (tmp_path / ckpt.CHECKPOINT_NAME).read_bytes()
    real_save = torch.save

    def half_then_fail(obj, fh, *args, **kwargs):
        real_save(obj, fh, *args, **kwargs)
        fh.truncate(100)  # a half-written file, then the crash
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(ckpt.torch, "save", half_then_fail)
    with pytest.raises(OSError, match="simulated"):
        model.train(max_epochs=2, batch_size=32, checkpoint_dir=str(tmp_path), checkpoint_every=1, resume=True)
    monkeypatch.undo()
    assert (tmp_path / ckpt.CHECKPOINT_NAME).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [ckpt.CHECKPOINT_NAME]
    assert ckpt.load_checkpoint(tmp_path)["epoch"] == 1
