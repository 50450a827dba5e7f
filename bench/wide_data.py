"""Wide data (15,000-20,000 genes): cellvi with and without the sparse first encoder layer vs scvi-tools.

Every run is a fresh process of ``bench/worker.py`` (peak RSS per run); per repeat the three runs
alternate (cellvi dense first layer, cellvi sparse first layer, scvi-tools), so that drifts of a shared
machine hit all three. Both libraries train at their defaults (n_hidden 128, n_latent 10, ZINB, batch
128) for the same fixed number of epochs; 's/epoch' is the median over the epochs after the first.
At defaults both libraries also pick the same number of epochs (min(400, 400 x 20,000 / cells)), so the
s/epoch ratio is the ratio of whole default trainings (compilation aside)::

    .venv/bin/python bench/wide_data.py                      # both datasets, 3 repeats
    .venv/bin/python bench/wide_data.py --datasets cellbench --repeats 3 --cellbench-epochs 30

Datasets: ``cellbench`` (../shared/data/cellbench_3celllines_2protocols.h5ad, 499 x 15,073, 2 batches,
42% non-zeros) and ``sim20kx20k`` (cellvi.data.simulate, 20,000 x 20,000, 2 batches, seed 0, ~3%
non-zeros). ``fused_kernels`` is what ``train()`` picks at the default 400 epochs: on for both (on
cellbench through its width: 449 training cells x 400 epochs x 15,073 genes >= 2e9); the eager row of
cellbench is the default before that rule. Latent and normalised-expression timings are skipped (a
20,000 x 20,000 result would not fit this benchmark's memory). Results: bench/results/wide_data.{json,md}.
Environment: ``CELLVI_PYTHON`` / ``SCVI_PYTHON`` override the interpreters of bench/speed.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speed  # noqa: E402 - the sibling benchmark's worker runner

HERE = speed.HERE
speed.PY["cellvi"] = os.environ.get("CELLVI_PYTHON", speed.PY["cellvi"])
speed.PY["scvi"] = os.environ.get("SCVI_PYTHON", speed.PY["scvi"])
# name: (library, cellvi fused_kernels, cellvi sparse_first_layer, train(precision=...))
VARIANTS = {
    "cellvi_dense_eager": ("cellvi", "off", "off", "32-true"),
    "cellvi_dense": ("cellvi", "on", "off", "32-true"),
    "cellvi_sparse": ("cellvi", "on", "on", "32-true"),
    "cellvi_dense_bf16": ("cellvi", "on", "off", "bf16-mixed"),
    "cellvi_sparse_bf16": ("cellvi", "on", "on", "bf16-mixed"),
    "scvi": ("scvi", None, None, "32-true"),
    "scvi_bf16": ("scvi", None, None, "bf16-mixed"),
}
CELLBENCH = ["cellvi_dense_eager", "cellvi_dense", "cellvi_sparse", "cellvi_dense_bf16", "scvi", "scvi_bf16"]
SIMULATED = ["cellvi_dense", "cellvi_sparse", "cellvi_sparse_bf16", "scvi", "scvi_bf16"]


def dataset(name: str, n_cells: int) -> tuple[Path, str, list[str]]:
    """(path of the .h5ad, batch key, the variants run), simulating on first use."""
    if name == "cellbench":  # its old default trained eagerly (449 cells x 400 epochs < 1M cell-epochs)
        return speed.SHARED / "cellbench_3celllines_2protocols.h5ad", "batch", CELLBENCH
    path = HERE / "data" / f"sim{n_cells}_20000genes.h5ad"
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        code = (
            f"import cellvi; cellvi.data.simulate(n_cells={n_cells}, n_genes=20000, n_batches=2, n_cell_types=5, "
            f"seed=0, chunk_size=2000, path={str(path)!r})"
        )
        subprocess.run([speed.PY["cellvi"], "-c", code], check=True)
    return path, "batch", SIMULATED


def run_dataset(name: str, epochs: int, repeats: int, tmp: Path, n_cells: int) -> dict:
    path, batch_key, variants = dataset(name, n_cells)
    runs: dict[str, list] = {k: [] for k in variants}
    load = [os.getloadavg()[0]]
    for i in range(repeats):
        for variant in variants:
            lib, fused, sparse, precision = VARIANTS[variant]
            extra = ["--config", "defaults", "--skip-inference", "--precision", precision]
            if lib == "cellvi":
                extra += ["--fused", fused, "--sparse-first-layer", sparse]
            out = tmp / f"wide_{name}_{variant}_{i}.json"
            runs[variant].append(speed.run_worker(lib, path, batch_key, epochs, out, *extra))
            load.append(os.getloadavg()[0])
    med = {
        v: {
            k: float(np.median([r[k] for r in rs]))
            for k in (
                "epoch_s",
                "epoch_cpu_s",
                "train_s",
                "peak_rss_mib",
                "heldout_elbo_per_cell",
                "other_procs_cpu_frac",
            )
        }
        for v, rs in runs.items()
    }
    for v, rs in runs.items():  # a default run of 400 epochs: the first (compilation) + 399 more
        med[v]["first_epoch_s"] = float(np.median([r["epoch_s_all"][0] for r in rs]))
        med[v]["est_400_epochs_s"] = med[v]["first_epoch_s"] + 399 * med[v]["epoch_s"]
    # ratios per repeat (runs next to each other), then their median
    cellvi = [v for v in variants if v != "scvi"]  # scvi_bf16 too: its ratio to scvi-tools' default
    per_repeat = {v: [s["epoch_s"] / c["epoch_s"] for c, s in zip(runs[v], runs["scvi"])] for v in cellvi}
    per_repeat_cpu = {v: [s["epoch_cpu_s"] / c["epoch_cpu_s"] for c, s in zip(runs[v], runs["scvi"])] for v in cellvi}
    bf16 = [v for v in cellvi if v.startswith("cellvi") and v.endswith("bf16")]
    same_precision = {  # bfloat16 against scvi-tools' own train(precision="bf16-mixed"), per repeat
        v: float(np.median([s["epoch_s"] / c["epoch_s"] for c, s in zip(runs[v], runs["scvi_bf16"])]))
        for v in bf16
        if "scvi_bf16" in runs
    }
    first = runs["cellvi_sparse"][0]
    return {
        "dataset": name,
        "cells_x_genes": [first["n_cells"], first["n_genes"]],
        "epochs": epochs,
        "repeats": repeats,
        "variants": {v: VARIANTS[v] for v in variants},
        "median": med,
        "speedup_vs_scvi": {v: float(np.median(r)) for v, r in per_repeat.items()},
        "speedup_vs_scvi_per_repeat": per_repeat,
        "cpu_time_speedup_vs_scvi": {v: float(np.median(r)) for v, r in per_repeat_cpu.items()},
        "cpu_time_speedup_vs_scvi_per_repeat": per_repeat_cpu,
        "est_400_epochs_speedup_vs_scvi": {
            v: med["scvi"]["est_400_epochs_s"] / med[v]["est_400_epochs_s"] for v in cellvi
        },
        "speedup_vs_scvi_bf16": same_precision,
        "sparse_vs_dense": med["cellvi_dense"]["epoch_s"] / med["cellvi_sparse"]["epoch_s"],
        "load_average_1min": load,
        "raw": runs,
    }


def markdown(results: dict) -> str:
    lines = [
        f"# Wide data: cellvi (dense and sparse first layer) vs scvi-tools {results['scvi_version']}",
        "",
        results["machine"],
        "",
        "| data | cells x genes | run | fused_kernels | sparse first layer | epochs | runs | s/epoch "
        "| precision | speed-up vs scvi (s/epoch) | CPU s/epoch | speed-up (CPU s/epoch) | first epoch s "
        "| est. 400 epochs s | speed-up, 400 epochs | peak RSS MiB | held-out ELBO | load avg (1 min) | other CPU |",
        "|" + "---|" * 19,
    ]
    for r in results["datasets"]:
        loads = f"{min(r['load_average_1min']):.1f}-{max(r['load_average_1min']):.1f}"
        for v, m in r["median"].items():
            lib, fused, sparse, precision = r["variants"][v]
            speed_up = r["speedup_vs_scvi"].get(v)
            whole = r["est_400_epochs_speedup_vs_scvi"].get(v)
            cpu = r["cpu_time_speedup_vs_scvi"].get(v)
            lines.append(
                f"| {r['dataset']} | {r['cells_x_genes'][0]} x {r['cells_x_genes'][1]} | {v} | {fused or '-'} "
                f"| {sparse or '-'} | {r['epochs']} | {r['repeats']} | {m['epoch_s']:.3f} | {precision} "
                f"| {f'**{speed_up:.2f}x**' if speed_up else '1'} | {m['epoch_cpu_s']:.3f} "
                f"| {f'**{cpu:.2f}x**' if cpu else '1'} | {m['first_epoch_s']:.1f} "
                f"| {m['est_400_epochs_s']:.0f} | {f'{whole:.2f}x' if whole else '1'} | {m['peak_rss_mib']:.0f} "
                f"| {m['heldout_elbo_per_cell']:.1f} | {loads} | {m['other_procs_cpu_frac']:.2f} |"
            )
    for r in results["datasets"]:
        for v, ratio in r.get("speedup_vs_scvi_bf16", {}).items():
            lines.append(f"\n{r['dataset']}: {v} is {ratio:.2f}x faster per epoch than scvi_bf16 (both in bfloat16).")
    lines += [
        "",
        "precision 'bf16-mixed': `train(precision=\"bf16-mixed\")` in both libraries (Lightning's autocast in "
        "scvi-tools, torch.autocast in cellvi): matrix products in bfloat16, weights and likelihood in float32. "
        "Medians over runs; each run is its own process; per repeat the runs of a dataset go one after the "
        "other, and each speed-up is the median of the per-repeat ratios of s/epoch (the median over the "
        "epochs after the first). Both libraries train at their defaults and would pick the same number "
        "of epochs (min(400, 400 x 20,000 / cells)), so the s/epoch ratio is the training-time ratio "
        "without compilation; 'est. 400 epochs' adds the first epoch (which holds compilation) to 399 "
        "further epochs (the median over the repeats: from the second repeat on, TorchInductor's on-disk "
        "caches are warm, as in a user's second and later runs; a first-ever run compiles cold, which took "
        "~25-30 s on cellbench). 'CPU s/epoch': the CPU seconds of the run's own process per epoch (all its "
        "threads; median after the first), which counts less of the time other processes take on the "
        "cores than wall time does. 'other CPU' is the share of the CPU other processes took during "
        "training: the machine (2 cores) was shared with other work, so wall-time figures are noisy and "
        "only ratios from the same repeat mean much.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["sim20kx20k", "cellbench"], choices=["cellbench", "sim20kx20k"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cellbench-epochs", type=int, default=30, help="the full default is 400")
    p.add_argument("--sim-epochs", type=int, default=3)
    p.add_argument("--sim-cells", type=int, default=20_000, help="cells of the simulated 20,000-gene set")
    p.add_argument("--out", default=str(HERE / "results" / "wide_data"))
    a = p.parse_args()
    tmp = HERE / "data" / "runs"
    tmp.mkdir(parents=True, exist_ok=True)
    scvi_version = subprocess.run(
        [speed.PY["scvi"], "-c", "import scvi; print(scvi.__version__)"], capture_output=True, text=True
    ).stdout.strip()
    results = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}; 2 torch threads per run; no GPU",
        "scvi_version": scvi_version,
        "datasets": [],
    }
    for name in a.datasets:
        epochs = a.cellbench_epochs if name == "cellbench" else a.sim_epochs
        results["datasets"].append(run_dataset(name, epochs, a.repeats, tmp, a.sim_cells))
        print(markdown(results), file=sys.stderr)
        Path(a.out + ".json").write_text(json.dumps(results, indent=1))
        Path(a.out + ".md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
