"""Train a small SCVI in a fresh process and print a JSON summary: the SHA-256 of the latent and the
history. Used by the checkpoint and determinism tests; run as a script:

    python tests/reliability/_worker.py --epochs 6 [--checkpoint-dir D [--resume]] [--slow 0.05] [--fused]

``--fused`` compiles the training step; the summary then says whether it stayed compiled.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
import warnings

import torch

import cellvi
from cellvi.model import SCVI


def run(
    epochs: int, checkpoint_dir: str | None = None, resume: bool = False, slow: float = 0.0, fused: bool = False
) -> dict:
    torch.set_num_threads(int(os.environ.get("CELLVI_TEST_THREADS", "2")))
    cellvi.settings.progress_bar = False
    cellvi.settings.seed = 0
    adata = cellvi.data.simulate(n_cells=300, n_genes=50, n_batches=2, n_cell_types=3, seed=1)
    SCVI.setup_anndata(adata, batch_key="batch")
    model = SCVI(adata, n_hidden=16, n_latent=4)
    if slow:  # stretch each step so that the parent process can kill us mid-run; no effect on numbers
        model.module.z_encoder.register_forward_pre_hook(lambda *_: time.sleep(slow))
    kwargs = {}
    if checkpoint_dir:
        kwargs = dict(checkpoint_dir=checkpoint_dir, checkpoint_every=1, resume=resume)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        model.train(max_epochs=epochs, batch_size=64, train_size=0.8, fused_kernels=fused, **kwargs)
    fell_back = any("torch.compile failed" in str(w.message) for w in caught)
    latent = model.get_latent_representation()
    # through JSON, so that epochs without validation compare equal (null, where NaN != NaN)
    history = json.loads(model.history.drop(columns="epoch_end_s").reset_index().to_json(orient="records"))
    return {
        "latent_sha256": hashlib.sha256(latent.tobytes()).hexdigest(),
        "history": history,
        "compiled": fused and not fell_back,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--checkpoint-dir")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--slow", type=float, default=0.0)
    parser.add_argument("--fused", action="store_true")
    args = parser.parse_args()
    print(json.dumps(run(args.epochs, args.checkpoint_dir, args.resume, args.slow, args.fused)), flush=True)
