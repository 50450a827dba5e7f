"""Time to a good model: cellvi's training settings against scvi-tools at its true defaults.

scvi-tools 1.4.2 trains at its defaults (20k cells: its epoch heuristic gives 400 epochs, batch 128,
lr 1e-3, KL warm-up over 400 epochs); its final held-out ELBO is the target. Each cellvi setting trains
with its own curve recorded; the time to quality is when its held-out ELBO first reaches the target,
and the whole ``train()`` call is reported too (what a user of that setting waits for). Every run is a
fresh process of ``bench/ttq_worker.py`` with one torch thread; the held-out cells are the same fixed
10% for every run (removed before training; each library still draws its own validation split from
the rest). Times are both wall seconds and the process's CPU seconds: with one thread the CPU seconds
are what a quiet machine's wall clock would show, and unlike wall time they do not grow when other
processes share the cores::

    .venv/bin/python bench/time_to_quality.py                       # run everything, then summarise
    .venv/bin/python bench/time_to_quality.py --summarise-only      # from the runs already in --runs

Results: bench/results/speed_ttq.json and speed_ttq.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PY = {"cellvi": str(REPO / ".venv/bin/python"), "scvi": str(HERE / ".venv-scvi/bin/python")}

# name -> (train() keywords, plan_kwargs); "defaults" is each library's train() with no arguments
SETTINGS: dict[str, tuple[dict, dict]] = {
    "defaults": ({}, {}),
    # the KL warm-up over 25 epochs instead of 400, a quarter of scvi-tools' epochs
    "kl25": ({"max_epochs": 100}, {"n_epochs_kl_warmup": 25}),
    # and the learning rate warmed up, then decayed along a cosine over 50 epochs
    "kl25_cos50": ({"max_epochs": 50}, {"lr": 0.002, "lr_schedule": "warmup_cosine", "n_epochs_kl_warmup": 25}),
    # larger minibatches with a larger rate (16 steps per epoch at 20k cells)
    "b1024_cos100": (
        {"batch_size": 1024, "max_epochs": 100},
        {"lr": 0.004, "lr_schedule": "warmup_cosine", "n_epochs_kl_warmup": 25},
    ),
    # the named schedule train(schedule="fast") (cellvi.model._schedules): kl25_cos50 at 20k cells
    "fast": ({"schedule": "fast"}, {}),
    # fast's learning rates over half of scvi-tools' epochs (below 20k cells), the KL warm-up over a tenth
    "fast_e200_kl20": ({"schedule": "fast", "max_epochs": 200}, {"n_epochs_kl_warmup": 20}),
}


def run(lib: str, setting: str, data: str, out: Path, seed: int, every: int, batch_key: str) -> dict:
    if out.exists():
        return json.loads(out.read_text())
    train_kwargs, plan_kwargs = SETTINGS[setting] if lib == "cellvi" else ({}, {})
    cmd = [
        PY[lib],
        str(HERE / "ttq_worker.py"),
        "--lib",
        lib,
        "--data",
        data,
        "--out",
        str(out),
        "--seed",
        str(seed),
        "--every",
        str(every),
        "--batch-key",
        batch_key,
        "--train-kwargs",
        json.dumps(train_kwargs),
        "--plan-kwargs",
        json.dumps(plan_kwargs),
    ]
    # one compile thread: inductor then compiles in this process (and its C++ compiler as a waited-for
    # child), so that the run's CPU seconds hold all of the compilation
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env["TORCHINDUCTOR_COMPILE_THREADS"] = "1"
    with tempfile.TemporaryDirectory() as cache:  # a cold compilation cache: a user's first run
        env["TORCHINDUCTOR_CACHE_DIR"] = cache
        subprocess.run(cmd, check=True, env=env)
    return json.loads(out.read_text())


def partial_run(lib: str, setting: str, path: Path) -> dict | None:
    """A run cut short (its worker writes the curve after every evaluation): what its curve tells."""
    if not path.exists():
        return None
    curve = json.loads(path.read_text())
    train_kwargs, plan_kwargs = SETTINGS[setting] if lib == "cellvi" else ({}, {})
    return {
        "curve": curve,
        "train_s": curve[-1][1],
        "final_heldout_elbo": curve[-1][2],
        "train_kwargs": train_kwargs,
        "plan_kwargs": plan_kwargs,
        "other_procs_cpu_frac": float("nan"),
        "peak_rss_mib": float("nan"),
        "partial": True,
    }


def reach(curve: list, target: float) -> dict:
    """First recorded epoch whose held-out ELBO is >= target: its epoch, wall and CPU seconds."""
    for epoch, wall, elbo, cpu in curve:
        if elbo >= target:
            return {"reached": True, "epoch": epoch, "wall_s": wall, "cpu_s": cpu, "elbo": elbo}
    return {"reached": False, "epoch": None, "wall_s": None, "cpu_s": None, "elbo": curve[-1][2]}


def summarise(scvi_runs: list[dict], cellvi_runs: dict[str, list[dict]]) -> dict:
    target = float(np.median([r["final_heldout_elbo"] for r in scvi_runs]))
    scvi_wall = float(np.median([r["train_s"] for r in scvi_runs]))
    scvi_cpu = float(np.median([r["curve"][-1][3] for r in scvi_runs]))
    out = {
        "target_heldout_elbo": target,
        "scvi": {
            "runs": len(scvi_runs),
            "epochs": [r["curve"][-1][0] for r in scvi_runs],
            "train_wall_s": scvi_wall,
            "train_cpu_s": scvi_cpu,
            "final_heldout_elbo": [r["final_heldout_elbo"] for r in scvi_runs],
            "other_procs_cpu_frac": [r["other_procs_cpu_frac"] for r in scvi_runs],
            "peak_rss_mib": [r["peak_rss_mib"] for r in scvi_runs],
        },
        "cellvi": {},
    }
    for name, runs in cellvi_runs.items():
        hits = [reach(r["curve"], target) for r in runs]
        ok = [h for h in hits if h["reached"]]
        whole_wall = [r["train_s"] for r in runs]
        whole_cpu = [r["curve"][-1][3] for r in runs]
        entry = {
            "train_kwargs": runs[0]["train_kwargs"],
            "plan_kwargs": runs[0]["plan_kwargs"],
            "runs": len(runs),
            "reached": [h["reached"] for h in hits],
            "epochs_to_target": [h["epoch"] for h in hits],
            "final_heldout_elbo": [r["final_heldout_elbo"] for r in runs],
            "epochs_run": [r["curve"][-1][0] for r in runs],
            "whole_train_wall_s": whole_wall,
            "whole_train_cpu_s": whole_cpu,
            "other_procs_cpu_frac": [r["other_procs_cpu_frac"] for r in runs],
            "peak_rss_mib": [r["peak_rss_mib"] for r in runs],
            "cut_short": [bool(r.get("partial")) for r in runs],
        }
        if len(ok) == len(runs):
            entry["to_target_wall_s"] = float(np.median([h["wall_s"] for h in ok]))
            entry["to_target_cpu_s"] = float(np.median([h["cpu_s"] for h in ok]))
            entry["speedup_to_target_cpu"] = scvi_cpu / entry["to_target_cpu_s"]
            entry["speedup_to_target_wall"] = scvi_wall / entry["to_target_wall_s"]
        if all(e >= target for e in entry["final_heldout_elbo"]) and not any(entry["cut_short"]):
            entry["speedup_whole_train_cpu"] = scvi_cpu / float(np.median(whole_cpu))
        out["cellvi"][name] = entry
    return out


def _fmt(v, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def markdown(res: dict) -> str:
    s = res["scvi"]
    lines = [
        "# Time to a good model: cellvi vs scvi-tools at its defaults",
        "",
        res["machine"],
        "",
        f"Data: {res['dataset']} ({res['n_train_cells']:,} training cells, {res['n_heldout_cells']:,} held-out "
        f"cells, the same for every run). scvi-tools {res['scvi_version']} at its defaults ({', '.join(str(e) for e in s['epochs'])} epochs, "
        f"{s['runs']} run(s)): {_fmt(s['train_cpu_s'])} CPU s ({_fmt(s['train_wall_s'])} s wall), held-out ELBO "
        f"**{res['target_heldout_elbo']:.2f}** (the target; median of its runs' final ELBO).",
        "",
        "| cellvi setting | train() / plan_kwargs | runs | reached | epochs to target | CPU s to target "
        "| **speed-up to target (CPU)** | wall s to target | speed-up (wall) | whole train(): epochs, CPU s "
        "| speed-up whole train() (CPU) | final held-out ELBO | other CPU |",
        "|" + "---|" * 13,
    ]
    for name, c in res["cellvi"].items():
        kw = json.dumps({**c["train_kwargs"], **c["plan_kwargs"]}) if c["train_kwargs"] or c["plan_kwargs"] else "-"
        lines.append(
            f"| {name} | `{kw}` | {c['runs']} | {sum(c['reached'])}/{c['runs']} "
            f"| {', '.join(_fmt(e, 'd') for e in c['epochs_to_target'])} | {_fmt(c.get('to_target_cpu_s'))} "
            f"| **{_fmt(c.get('speedup_to_target_cpu'), '.2f')}x** | {_fmt(c.get('to_target_wall_s'))} "
            f"| {_fmt(c.get('speedup_to_target_wall'), '.2f')}x "
            f"| {', '.join(str(e) + (' (cut short)' if cut else '') for e, cut in zip(c['epochs_run'], c['cut_short']))}, "
            f"{_fmt(float(np.median(c['whole_train_cpu_s'])))} "
            f"| {_fmt(c.get('speedup_whole_train_cpu'), '.2f')}x "
            f"| {', '.join(f'{e:.2f}' for e in c['final_heldout_elbo'])} "
            f"| {_fmt(max((v for v in c['other_procs_cpu_frac'] if v == v), default=None), '.2f')} |"
        )
    lines += [
        "",
        "One torch thread per run, both libraries, compilation (cellvi's torch.compile) included. 'CPU s' is "
        "the training process's CPU time with the held-out evaluations taken out: with one thread it is the "
        "wall time a quiet machine would show, and it is the primary figure here because the machine was "
        "shared (the 'other CPU' column: the share of both cores other processes used; wall times are "
        "inflated by it, by a different factor for each run). 'To target': the first evaluated epoch "
        "whose held-out ELBO reaches the target. 'Whole train()': the run as a user of that setting would "
        "wait for it; its speed-up is given only when its final ELBO reaches the target. Medians over runs "
        "where runs > 1.",
    ]
    lines += [f"- {note}" for note in res.get("notes", [])]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(HERE / "data" / "sim20k.h5ad"), help="made by bench/speed.py")
    p.add_argument("--batch-key", default="batch", help="obs column of batches ('' for data without batches)")
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--scvi-seeds", nargs="+", type=int, default=[0])
    p.add_argument("--runs", default=str(HERE / "data" / "ttq"), help="folder of the per-run JSON files (reused)")
    p.add_argument("--summarise-only", action="store_true", help="use the runs in --runs; run nothing")
    p.add_argument("--cellvi-only", action="store_true", help="run the cellvi settings only; no summary")
    p.add_argument("--note", action="append", default=[], help="a line for the results' notes")
    p.add_argument("--out", default=str(HERE / "results" / "speed_ttq"))
    a = p.parse_args()
    runs = Path(a.runs)
    runs.mkdir(parents=True, exist_ok=True)

    def get(lib: str, setting: str, seed: int) -> dict | None:
        path = runs / f"{lib}_{setting}_s{seed}.json"
        if a.summarise_only:
            if path.exists():
                return json.loads(path.read_text())
            return partial_run(lib, setting, Path(str(path) + ".partial"))
        return run(lib, setting, a.data, path, seed, 5 if lib == "scvi" else 1, a.batch_key)

    if a.cellvi_only:
        for name in a.settings:
            for seed in a.seeds:
                get("cellvi", name, seed)
        return
    scvi_runs = [r for s in a.scvi_seeds if (r := get("scvi", "defaults", s)) is not None]
    cellvi_runs = {
        name: found for name in a.settings if (found := [r for s in a.seeds if (r := get("cellvi", name, s))])
    }
    res = summarise(scvi_runs, cellvi_runs)
    first = scvi_runs[0]
    scvi_version = subprocess.run(
        [PY["scvi"], "-c", "import scvi; print(scvi.__version__)"], capture_output=True, text=True
    ).stdout.strip()
    res |= {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores shared with other work, Python "
        f"{platform.python_version()}, torch {first['torch']}, {time.strftime('%Y-%m-%d')}; 1 torch thread per run; "
        "no GPU",
        "scvi_version": scvi_version or first["version"],
        "dataset": Path(first["data"]).stem,
        "n_train_cells": first["n_train_cells"],
        "n_heldout_cells": first["n_heldout_cells"],
        "notes": a.note,
        "raw": {"scvi": scvi_runs, "cellvi": cellvi_runs},
    }
    Path(a.out + ".json").write_text(json.dumps(res, indent=1))
    Path(a.out + ".md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
