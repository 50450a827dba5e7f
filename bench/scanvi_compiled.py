"""scANVI trained eagerly vs with the compiled step (``train(fused_kernels=False / True)``).

Each run is a fresh process (this file with ``--worker``): simulate the data (seeded, the same for every
run), hide 70% of the labels, train SCANVI from scratch for ``--epochs`` epochs, and record the seconds
per epoch (median after the first), the first epoch (which holds compilation), peak RSS, the final
training ELBO and the accuracy of ``predict()`` on the hidden labels. Runs alternate eager / compiled in
ABBA order over the repeats, and each speed-up is the median of the per-repeat ratios::

    .venv/bin/python bench/scanvi_compiled.py                  # 20,000 x 2,000, 15 epochs, 3 repeats

Results: bench/results/scanvi_compiled.{json,md}. TorchInductor's on-disk caches are warm after the first
compiled run (a first-ever compile takes longer; see docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def worker(args: argparse.Namespace) -> dict:
    import torch

    import cellvi

    torch.set_num_threads(args.threads)
    adata = cellvi.data.simulate(
        n_cells=args.n_cells, n_genes=args.n_genes, n_batches=2, n_cell_types=args.n_cell_types, seed=0
    )
    truth = adata.obs["cell_type"].astype(str).to_numpy()
    hidden = np.random.default_rng(0).random(adata.n_obs) < 0.7
    adata.obs["labels"] = np.where(hidden, "Unknown", truth)
    cellvi.settings.seed = args.seed
    cellvi.model.SCANVI.setup_anndata(adata, labels_key="labels", unlabeled_category="Unknown", batch_key="batch")
    model = cellvi.model.SCANVI(adata)
    start = time.perf_counter()
    model.train(max_epochs=args.epochs, fused_kernels=args.mode == "compiled", enable_progress_bar=False)
    train_s = time.perf_counter() - start
    ends = np.asarray(model.history["epoch_end_s"], dtype=float)
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))
    return {
        "mode": args.mode,
        "seed": args.seed,
        "train_s": train_s,
        "first_epoch_s": float(ends[0]),
        "epoch_s": float(np.median(np.diff(ends))),
        "elbo_train": float(model.history["elbo_train"].iloc[-1]),
        "hidden_label_accuracy": float(np.mean(model.predict()[hidden] == truth[hidden])),
        "peak_rss_mib": peak,
    }


def run(args: argparse.Namespace, mode: str, seed: int) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [sys.executable, __file__, "--worker", "--mode", mode, "--seed", str(seed), "--out", out.name]
        cmd += ["--n-cells", str(args.n_cells), "--n-genes", str(args.n_genes), "--epochs", str(args.epochs)]
        cmd += ["--threads", str(args.threads), "--n-cell-types", str(args.n_cell_types)]
        subprocess.run(cmd, check=True)
        return json.loads(Path(out.name).read_text())


def markdown(res: dict) -> str:
    a = res["args"]
    lines = [
        "# scANVI: eager vs compiled training step",
        "",
        f"{res['machine']}; {a['threads']} torch threads. Simulated {a['n_cells']:,} cells x {a['n_genes']:,} "
        f"genes, 2 batches, {a['n_cell_types']} cell types, 70% of the labels hidden; SCANVI from scratch, "
        f"{a['epochs']} epochs, batch 128; {a['repeats']} runs of each (ABBA order, each its own process).",
        "",
        "| step | s/epoch | first epoch s | train() s | peak RSS MiB | final train ELBO | accuracy on hidden labels |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode in ("eager", "compiled"):
        rs = [r for r in res["runs"] if r["mode"] == mode]

        def med(key, rs=rs):
            return float(np.median([r[key] for r in rs]))

        accs = ", ".join(f"{r['hidden_label_accuracy']:.3f}" for r in rs)
        lines.append(
            f"| {mode} | {med('epoch_s'):.3f} | {med('first_epoch_s'):.1f} | {med('train_s'):.1f} "
            f"| {med('peak_rss_mib'):.0f} | {med('elbo_train'):.2f} | {accs} |"
        )
    lines += [
        "",
        f"Compiled vs eager, median of the per-repeat ratios: **{res['speedup_per_epoch']:.2f}x** per epoch, "
        f"{res['speedup_train']:.2f}x for the whole train() (compilation included, {a['epochs']} epochs).",
        "",
        "Medians over runs. The first epoch holds compilation; TorchInductor's on-disk caches are warm from "
        "the second compiled run on (a first-ever compile on a machine takes ~25 s more). Seeds differ per "
        "repeat (0, 1, ...), the same for both modes within a repeat; compiled float sums run in another "
        "order than eager ones, so the two modes' models differ by round-off that training amplifies.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=["eager", "compiled"], default="eager", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--n-cells", type=int, default=20_000)
    p.add_argument("--n-genes", type=int, default=2_000)
    p.add_argument("--n-cell-types", type=int, default=8)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--results", default=str(HERE / "results" / "scanvi_compiled"))
    args = p.parse_args()
    if args.worker:
        Path(args.out).write_text(json.dumps(worker(args)))
        return
    runs = []
    for i in range(args.repeats):
        order = ("eager", "compiled") if i % 2 == 0 else ("compiled", "eager")
        for mode in order:
            runs.append(run(args, mode, i))
            print(json.dumps(runs[-1]), flush=True)

    def ratio(key):
        per = [
            next(r for r in runs if r["seed"] == i and r["mode"] == "eager")[key]
            / next(r for r in runs if r["seed"] == i and r["mode"] == "compiled")[key]
            for i in range(args.repeats)
        ]
        return float(np.median(per))

    res = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}",
        "args": {k: v for k, v in vars(args).items() if k not in ("worker", "mode", "seed", "out")},
        "runs": runs,
        "speedup_per_epoch": ratio("epoch_s"),
        "speedup_train": ratio("train_s"),
    }
    Path(args.results + ".json").write_text(json.dumps(res, indent=1))
    Path(args.results + ".md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
