"""Data-parallel scaling: training speed of 1 process vs N processes (torchrun, gloo), 1 torch thread each.

Each run is a fresh set of processes: ``nproc=1`` is a plain ``python`` process (the single-process
path), ``nproc>1`` is started by :func:`cellvi.train.distributed.launch` (torchrun). Every process
reads the .h5ad into memory (as an unchanged user script would), trains the default SCVI at the same
global ``batch_size`` for ``--epochs`` epochs, then the held-out ELBO is computed (split over ranks).
Configurations alternate in ABBA order (1, N, N, 1, 1, N, ...) so that drifts of a shared machine hit
both alike; ``--repeats`` (default 3) runs of each, medians reported.

    .venv/bin/python bench/distributed.py                         # 200,000 x 2,000 simulated cells, 3 x 2 runs
    .venv/bin/python bench/distributed.py --cells 50000 --repeats 3 --epochs 2

``s/epoch`` is the median over the epochs after the first (the first holds one-off costs); cells/s is
training cells / that. ``other CPU`` is the share of the machine's CPU that other processes used while
training (0 = quiet); with more processes than free cores, N processes cannot be N times faster.
``--params`` prints the all-reduce volume per step of the default model (docs/distributed.md).
Results: bench/results/distributed.json and distributed.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from worker import peak_rss_mib  # bench/ is on the path when run as a script

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def _cpu() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, of this process) so far."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    own = resource.getrusage(resource.RUSAGE_SELF)
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK"), own.ru_utime + own.ru_stime


def worker(a) -> None:
    import anndata as ad
    import torch

    import cellvi
    from cellvi.train import distributed

    torch.set_num_threads(1)
    cellvi.settings.progress_bar = False
    cellvi.settings.seed = 0
    adata = ad.read_h5ad(a.data)
    cellvi.model.SCVI.setup_anndata(adata, batch_key="batch")
    model = cellvi.model.SCVI(adata)
    w = distributed.world()
    machine0, own0 = _cpu()
    t0 = time.perf_counter()
    model.train(max_epochs=a.epochs, batch_size=a.batch_size, fused_kernels=False)
    wall = time.perf_counter() - t0
    machine1, own1 = _cpu()
    ends = model.history["epoch_end_s"].to_numpy()
    epoch_s = np.diff(np.concatenate([[0.0], ends]))
    own_total = float(distributed.sum_over_ranks(torch.tensor([own1 - own0], dtype=torch.float64)).item())
    other = max(0.0, ((machine1 - machine0) - own_total) / (wall * (os.cpu_count() or 1)))
    elbo = model.get_elbo(indices=model.validation_indices)
    rss = distributed.sum_over_ranks(
        torch.tensor(
            [peak_rss_mib() if r == w.rank else 0.0 for r in range(w.size)],
            dtype=torch.float64,
        )
    ).tolist()
    if w.main:
        steady = float(np.median(epoch_s[1:])) if len(epoch_s) > 1 else float(epoch_s[0])
        Path(a.out).write_text(
            json.dumps(
                {
                    "nproc": w.size,
                    "n_train": len(model.train_indices),
                    "epochs": a.epochs,
                    "batch_size": a.batch_size,
                    "epoch_s": epoch_s.tolist(),
                    "s_per_epoch": steady,
                    "first_epoch_s": float(epoch_s[0]),
                    "train_cells_per_s": len(model.train_indices) / steady,
                    "heldout_elbo": elbo,
                    "peak_rss_mib_per_rank": rss,
                    "other_cpu_frac": other,
                }
            )
        )


def parameter_volume(genes: int, n_batch: int = 1) -> dict:
    """Trainable parameters of the default SCVI (n_hidden 128, n_latent 10, 1 layer, zinb, gene
    dispersion) at ``genes`` genes, and the bytes a step all-reduces (float32 gradients)."""
    import cellvi

    module = cellvi.module.VAE(n_input=genes, n_batch=n_batch)
    n = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return {"genes": genes, "n_batch": n_batch, "parameters": n, "allreduce_bytes_per_step": 4 * n}


def describe_machine() -> str:
    """CPU model, cores, memory, Python and torch, the date and the load average when the benchmark starts."""
    import torch

    model = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{model} ({platform.machine()}), {os.cpu_count()} cores, {mem:.0f} GiB, Python {platform.python_version()}, "
        f"torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average at start "
        f"{load}, no GPU"
    )


def run(nproc: int, data: Path, a, out: Path) -> dict:
    args = [
        str(Path(__file__).resolve()),
        "--worker",
        "--data",
        str(data),
        "--epochs",
        str(a.epochs),
        "--batch-size",
        str(a.batch_size),
        "--out",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    if nproc == 1:
        subprocess.run([sys.executable, *args], check=True, env=env)
    else:
        code = f"import sys; from cellvi.train.distributed import launch; sys.exit(launch(sys.argv[1:], {nproc}))"
        cmd = [sys.executable, "-c", code, *args]
        subprocess.run(cmd, check=True, env=env)
    return json.loads(out.read_text())


def markdown(res: dict) -> str:
    lines = [
        "# Data-parallel training: 1 vs N processes (torchrun, gloo, CPU)",
        "",
        (
            f"{res['machine']}; {res['cells']:,} simulated cells x {res['genes']:,} genes; default SCVI; global "
            f"batch_size {res['batch_size']}; {res['epochs']} epochs; 1 torch thread per process; "
            f"{res['repeats']} run(s) per configuration, medians."
        ),
        "",
        (
            "| processes | s/epoch | training cells/s | speed-up vs 1 | first epoch (s) | peak RSS per rank (MiB) "
            "| held-out ELBO | other CPU |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in res["summary"]:
        lines.append(
            f"| {row['nproc']} | {row['s_per_epoch']:.1f} | {row['train_cells_per_s']:.0f} | "
            f"**{row['speedup']:.2f}x** | {row['first_epoch_s']:.1f} | "
            f"{' / '.join(f'{x:.0f}' for x in row['peak_rss_mib_per_rank'])} | {row['heldout_elbo']:.2f} | "
            f"{row['other_cpu_frac']:.2f} |"
        )
    lines += [
        "",
        "All-reduce volume per step of the default model (float32 gradients, 1 batch):",
        "",
        "| genes | parameters | bytes per step |",
        "|---|---|---|",
    ]
    lines += [
        f"| {p['genes']:,} | {p['parameters']:,} | {p['allreduce_bytes_per_step'] / 1e6:.1f} MB |"
        for p in res["parameters"]
    ]
    lines += ["", res["note"], ""]
    if res.get("command"):
        lines += [f"Command: `{res['command']}`", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--data")
    p.add_argument("--out")
    p.add_argument("--cells", type=int, default=200_000)
    p.add_argument("--genes", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="runs per configuration (medians; default 3)")
    p.add_argument("--note", default="", help="a sentence for the results file (the conditions of the run)")
    p.add_argument("--params", action="store_true", help="print the all-reduce volume per step and exit")
    a = p.parse_args()
    if a.worker:
        return worker(a)
    params = [parameter_volume(g) for g in (2000, 20000)]
    if a.params:
        print(json.dumps(params, indent=1))
        return None
    data = HERE / "data" / f"sim_{a.cells}x{a.genes}.h5ad"
    if not data.exists():
        data.parent.mkdir(exist_ok=True)
        import cellvi

        cellvi.data.simulate(n_cells=a.cells, n_genes=a.genes, n_batches=3, n_cell_types=5, seed=0, path=data)
    machine = describe_machine()
    runs = []
    for rep in range(a.repeats):
        for nproc in (1, a.nproc) if rep % 2 == 0 else (a.nproc, 1):  # ABBA: drifts hit both alike
            r = run(nproc, data, a, HERE / "data" / f"distributed_{nproc}_{rep}.json")
            print(
                f"{nproc} process(es): {r['s_per_epoch']:.1f} s/epoch, {r['train_cells_per_s']:.0f} cells/s, "
                f"other CPU {r['other_cpu_frac']:.2f}",
                flush=True,
            )
            runs.append(r)
    summary = []
    for nproc in (1, a.nproc):
        rs = [r for r in runs if r["nproc"] == nproc]
        med = {
            k: float(np.median([r[k] for r in rs]))
            for k in ("s_per_epoch", "train_cells_per_s", "first_epoch_s", "heldout_elbo", "other_cpu_frac")
        }
        med["peak_rss_mib_per_rank"] = np.max([r["peak_rss_mib_per_rank"] for r in rs], axis=0).tolist()
        summary.append({"nproc": nproc, **med})
    for row in summary:
        row["speedup"] = row["train_cells_per_s"] / summary[0]["train_cells_per_s"]
    res = {
        "machine": machine,
        "cells": a.cells,
        "genes": a.genes,
        "epochs": a.epochs,
        "batch_size": a.batch_size,
        "repeats": a.repeats,
        "command": shlex.join(["python", "bench/distributed.py", *sys.argv[1:]]),
        "runs": runs,
        "summary": summary,
        "parameters": params,
        "note": (a.note + " " if a.note else "")
        + "Timings on a shared machine are noisy: read the speed-up with the 'other CPU' column.",
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "distributed.json").write_text(json.dumps(res, indent=1))
    (HERE / "results" / "distributed.md").write_text(markdown(res))
    print(markdown(res))
    return None


if __name__ == "__main__":
    main()
