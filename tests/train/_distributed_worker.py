"""A one-process cellvi script that tests/train/test_distributed.py runs under torchrun (2 processes, gloo).

    torchrun --standalone --nproc-per-node 2 --max-restarts 1 _distributed_worker.py DATA.h5ad OUT_DIR

Nothing in it is distributed-specific except what it records (per rank, into OUT_DIR) for the test to
check: it trains with a different seed on each rank and checkpoints every epoch, rank 1 SIGKILLs itself
in epoch KILL_EPOCH of the first attempt (torchrun then restarts both workers, which resume from the
checkpoint), then saves the model, infers, trains SCANVI from it (its calibration error), trains with early stopping, and trains and infers from the
backed file recording which rows each rank reads. (One launch for all: starting Python processes is
most of the time these tests take.)
"""

from __future__ import annotations

import faulthandler
import hashlib
import json
import os
import signal
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import torch

import cellvi
from cellvi.data import ondisk
from cellvi.train import distributed

EPOCHS, BATCH, KILL_EPOCH = 20, 128, 8
MODEL = {"n_hidden": 32, "n_latent": 5}


def _weights(model) -> str:
    """A digest of every weight and buffer."""
    return hashlib.sha256(b"".join(v.cpu().numpy().tobytes() for v in model.module.state_dict().values())).hexdigest()


def _rchar() -> int:
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar")).split()[1])


def main(data: str, out: Path) -> None:
    rank = int(os.environ["RANK"])
    faulthandler.dump_traceback_later(int(os.environ.get("WORKER_TIMEOUT_S", "300")), exit=True)  # never hang CI
    attempt = distributed.restart_count()
    torch.set_num_threads(1)
    cellvi.settings.progress_bar = False
    cellvi.settings.seed = 100 + rank  # different seeds: rank 0's shuffle seed and weights must win
    adata = ad.read_h5ad(data)
    cellvi.model.SCVI.setup_anndata(adata, batch_key="batch")
    model = cellvi.model.SCVI(adata, **MODEL)
    rec = {"rank": rank, "attempt": attempt, "initial": _weights(model)}

    def log_epoch(epoch, row):
        with open(out / f"epochs_{rank}.jsonl", "a") as f:
            f.write(json.dumps({"attempt": attempt, "epoch": epoch}) + "\n")
        if rank == 1 and attempt == 0 and epoch == KILL_EPOCH:
            os.kill(os.getpid(), signal.SIGKILL)

    model.train(
        max_epochs=EPOCHS, batch_size=BATCH, callbacks=[log_epoch], checkpoint_dir=str(out / "ckpt"), checkpoint_every=1
    )
    rec.update(
        final=_weights(model),
        history=model.history.reset_index().to_dict("list"),
        validation=model.validation_indices.tolist(),
    )
    model.save(out / "model", overwrite=True)
    np.save(out / f"latent_{rank}.npy", model.get_latent_representation())
    np.save(out / f"expr_{rank}.npy", model.get_normalized_expression(return_numpy=True))
    model.write_latent(out / "latent.h5ad", overwrite=True)
    rec["elbo"] = model.get_elbo(indices=model.validation_indices)
    scanvi = cellvi.model.SCANVI.from_scvi_model(model, "Unknown", labels_key="cell_type")
    scanvi.train(max_epochs=2, batch_size=BATCH)  # validates after the last epoch
    rec["scanvi"] = {
        "history": scanvi.history.reset_index().to_dict("list"),
        "validation": scanvi.validation_indices.tolist(),
    }
    scanvi.save(out / "scanvi", overwrite=True)
    stopped = cellvi.model.SCVI(adata, **MODEL)
    stopped.train(
        max_epochs=200, batch_size=BATCH, early_stopping=True, early_stopping_patience=2, plan_kwargs={"lr": 5e-3}
    )
    rec["early_stopping"] = stopped.history.reset_index().to_dict("list")
    rec["ondisk"] = _ondisk(data)
    (out / f"rank_{rank}.json").write_text(json.dumps(rec))


def _ondisk(data: str) -> dict:
    """Train 2 epochs and infer from the backed file, recording the rows this rank reads."""
    rows: list[np.ndarray] = []
    originals = {name: getattr(ondisk.RowReader, name) for name in ("read_blocks", "lazy_blocks")}
    for name, original in originals.items():

        def spy(self, r, _original=original):
            rows.append(np.asarray(r).copy())
            return _original(self, r)

        setattr(ondisk.RowReader, name, spy)
    try:
        return _train_and_infer(data, rows)
    finally:
        for name, original in originals.items():
            setattr(ondisk.RowReader, name, original)


def _train_and_infer(data: str, rows: list) -> dict:
    backed = ad.read_h5ad(data, backed="r")
    before = _rchar()
    cellvi.model.SCVI.setup_anndata(backed, batch_key="batch")
    setup_bytes = _rchar() - before
    model = cellvi.model.SCVI(backed, **MODEL)
    before = _rchar()
    model.train(max_epochs=2, batch_size=BATCH)
    train_bytes = _rchar() - before
    train_rows = np.unique(np.concatenate(rows)).tolist()
    rows.clear()
    latent = model.get_latent_representation()
    return {
        "setup_bytes": setup_bytes,
        "summary": model.registry.summary,
        "train_rows": train_rows,
        "train_bytes": train_bytes,
        "infer_rows": np.unique(np.concatenate(rows)).tolist(),
        "latent_sum": float(latent.sum()),
        "n_latent_rows": len(latent),
    }


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
