"""`cellvi run` end to end on simulated branching data: time and peak RSS of each step.

    .venv/bin/python bench/run_pipeline.py --n-cells 200000                     # the issue's 200k run
    .venv/bin/python bench/run_pipeline.py --n-cells 1000000 --backed          # 1M cells from a backed file
    .venv/bin/python bench/run_pipeline.py --n-cells 50000 --max-epochs 10 --seeds 0 1 2

The data are written by ``cellvi.data.simulate_trajectory(path=...)`` (chunked, memory bounded), then
each seed runs ``cellvi run FILE -o OUT`` in a fresh process (so peak RSS is that run's). ``--backed``
sets CELLVI_BACKED_BYTES=0 so the .h5ad is opened backed whatever its size (by default files of 2 GiB
and more are). Per step: wall seconds and the process's peak RSS at the end of the step (VmHWM, a
running maximum), from the run's summary.json; medians over seeds. "machine busy share" is the share of
the whole machine's CPU time in use during a run (this run's process included; on a shared machine
the rest is other processes' load: the figures are then noisy).
Writes bench/results/run_pipeline[_SUFFIX].json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _cpu_ticks() -> tuple[int, int]:
    """(total, idle) CPU ticks of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    return sum(parts), parts[3] + parts[4]


def _pseudotime_spearman(path: Path) -> float | None:
    """Spearman correlation of the run's diffusion pseudotime with the simulator's true time (obs only)."""
    import anndata
    from scipy.stats import spearmanr

    obs = anndata.read_h5ad(path, backed="r").obs
    if "dpt_pseudotime" not in obs or "time" not in obs:
        return None
    dpt = obs["dpt_pseudotime"].to_numpy(dtype=float)
    ok = np.isfinite(dpt)
    return round(float(spearmanr(dpt[ok], obs["time"].to_numpy()[ok])[0]), 3)


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-cells", type=int, default=200_000)
    ap.add_argument("--n-genes", type=int, default=2000)
    ap.add_argument("--n-top-genes", type=int, default=2000)
    ap.add_argument("--max-epochs", type=int, default=None, help="default: cellvi's heuristic")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--backed", action="store_true", help="open the input backed whatever its size")
    ap.add_argument("--workdir", default=None, help="where data and outputs go (default: a temp folder)")
    ap.add_argument("--suffix", default="", help="results file name suffix")
    ap.add_argument("--threads", type=int, default=1, help="torch/BLAS/numba threads of the run (default 1)")
    args = ap.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="cellvi_run_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / f"traj_{args.n_cells}.h5ad"
    threads = str(args.threads)
    env = {
        **os.environ,
        "PYTHONPATH": str(HERE.parent / "src"),
        **{k: threads for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")},
    }
    sim_s = None
    if not data.exists():
        t = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-c",
                (
                    "import sys, cellvi; cellvi.data.simulate_trajectory("
                    "n_cells=int(sys.argv[1]), n_genes=int(sys.argv[2]), n_batches=3, seed=0, path=sys.argv[3])"
                ),
                str(args.n_cells),
                str(args.n_genes),
                str(data),
            ],
            check=True,
            env=env,
        )
        sim_s = round(time.perf_counter() - t, 1)
    if args.backed:
        env["CELLVI_BACKED_BYTES"] = "0"
    runs = []
    for seed in args.seeds:
        out = work / f"out_seed{seed}"
        cmd = [
            sys.executable,
            "-m",
            "cellvi.cli",
            "run",
            str(data),
            "-o",
            str(out),
            "--overwrite",
            "--no-progress",
            "--batch-key",
            "batch",
            "--labels-key",
            "cell_type",
            "--root-group",
            "root",
            "--no-scib",
            "--n-top-genes",
            str(args.n_top_genes),
            "--seed",
            str(seed),
        ]
        if args.max_epochs:
            cmd += ["--max-epochs", str(args.max_epochs)]
        total0, idle0 = _cpu_ticks()
        t = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t
        # this driver's children so far: the runs (the simulation ran before the first; its peak is below
        # this only if it was lower)
        children_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        total1, idle1 = _cpu_ticks()
        load_avg = [round(x, 2) for x in os.getloadavg()]  # 1, 5 and 15 minutes, at the run's end
        if proc.returncode != 0:
            sys.exit(f"cellvi run failed:\n{proc.stderr[-3000:]}")
        summary = json.loads((out / "summary.json").read_text())
        ncpu = os.cpu_count() or 1
        busy_share = 1 - (idle1 - idle0) / max(total1 - total0, 1)  # of the whole machine
        runs.append(
            {
                "seed": seed,
                "wall_s": round(wall, 1),
                "steps": summary["steps"],
                "epochs": summary["epochs"],
                "backed": summary["backed"],
                "clusters": summary["clusters"],
                "subsamples": summary["subsamples"],
                "children_peak_rss_mib": round(children_peak, 1),
                "metrics": summary["metrics"],
                "dpt_spearman_true_time": _pseudotime_spearman(out / "result.h5ad"),
                "machine_busy_share": round(busy_share, 3),
                "load_average_at_end": load_avg,
                "cpus": ncpu,
            }
        )
    names = [s["step"] for s in runs[0]["steps"]]
    table = []
    for i, name in enumerate(names):
        secs = [r["steps"][i]["seconds"] for r in runs]
        rss = [r["steps"][i]["peak_rss_mib"] for r in runs]
        row = {"step": name, "seconds_median": float(np.median(secs)), "peak_rss_mib_median": float(np.median(rss))}
        for key in ("step_peak_rss_mib", "rss_mib"):  # (Linux: the peak within the step; resident at its end)
            vals = [r["steps"][i].get(key) for r in runs]
            row[f"{key}_median"] = float(np.median(vals)) if None not in vals else None
        table.append(row)
    result = {
        "n_cells": args.n_cells,
        "n_genes": args.n_genes,
        "n_top_genes": args.n_top_genes,
        "max_epochs": args.max_epochs,
        "threads": args.threads,
        "backed": args.backed,
        "seeds": args.seeds,
        "simulate_s": sim_s,
        "steps": table,
        "runs": runs,
        "peak_rss_mib": max(max(s["peak_rss_mib"] for s in r["steps"]) for r in runs),
    }
    name = f"run_pipeline{args.suffix}"
    (HERE / "results" / f"{name}.json").write_text(json.dumps(result, indent=1))
    lines = [
        f"# `cellvi run` end to end: {args.n_cells:,} simulated cells x {args.n_genes:,} genes",
        "",
        (
            f"Input {'opened backed' if args.backed else 'read in memory'}; {args.n_top_genes} HVGs; "
            f"{args.threads} thread(s); subsamples {runs[0]['subsamples']}; "
            f"epochs {runs[0]['epochs']}; seeds {args.seeds}; machine busy share during the runs "
            f"(all processes, {runs[0]['cpus']} CPUs): {[r['machine_busy_share'] for r in runs]}; load average "
            f"(1/5/15 min) at the end of each run: {[r['load_average_at_end'] for r in runs]}. "
            f"Simulating the file took {sim_s} s."
        ),
        "",
        "| step | seconds | peak RSS MiB within the step | RSS MiB at its end | peak RSS MiB so far |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['step']} | {r['seconds_median']:.1f} | {_mib(r['step_peak_rss_mib_median'])} | "
        f"{_mib(r['rss_mib_median'])} | {r['peak_rss_mib_median']:.0f} |"
        for r in table
    ]
    lines += [
        "",
        f"Whole runs (wall s): {[r['wall_s'] for r in runs]}; metrics: {runs[0]['metrics']}; "
        f"clusters: {[r['clusters'] for r in runs]}; diffusion pseudotime (--root-group root) vs the true time, "
        f"Spearman: {[r['dpt_spearman_true_time'] for r in runs]}. Peak RSS of the whole run: {result['peak_rss_mib']:.0f} MiB.",
        "",
    ]
    (HERE / "results" / f"{name}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
