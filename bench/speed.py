"""cellvi vs scvi-tools, side by side: training and inference speed, memory and held-out ELBO.

Every run is a fresh process of ``bench/worker.py`` (so peak RSS is per run), and the two libraries
alternate (cellvi, scvi, cellvi, scvi, ...) so that drifts of the machine hit both. Reports medians
over runs and the ratios cellvi / scvi-tools. Needs ``bench/.venv-scvi`` (``bash bench/setup_scvi_env.sh``)
and cellvi's own environment (``make install``)::

    .venv/bin/python bench/speed.py                    # all datasets
    .venv/bin/python bench/speed.py --datasets sim20k --repeats 3 --epochs 6

Datasets: ``sim20k`` (cellvi.data.simulate, 20,000 x 2,000, 3 batches, 5 cell types, ~88% zeros,
seed 0), ``mouse10k`` (../shared/data/mouse_10x_10k.h5ad, no batch), ``sim200k`` (200,000 cells).
``--time-to-quality``: scvi-tools trains ``--ttq-epochs`` epochs at its defaults; cellvi, at its
defaults, trains until its held-out ELBO reaches scvi-tools' final one; wall times are compared.
Results: bench/results/speed.json and speed.md.
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

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PY = {"cellvi": str(REPO / ".venv/bin/python"), "scvi": str(HERE / ".venv-scvi/bin/python")}
SHARED = Path(os.environ.get("CELLVI_DATA_DIR", REPO.parent / "shared" / "data"))


def dataset(name: str) -> tuple[Path, str]:
    """(path of the .h5ad, batch key) of a benchmark dataset, simulating it on first use."""
    if name == "mouse10k":
        return SHARED / "mouse_10x_10k.h5ad", ""
    n = {"sim20k": 20_000, "sim200k": 200_000}[name]
    path = HERE / "data" / f"{name}.h5ad"
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        code = (
            f"import cellvi; cellvi.data.simulate(n_cells={n:d}, n_genes=2000, n_batches=3, n_cell_types=5, "
            f"seed=0, path={str(path)!r})"
        )
        subprocess.run([PY["cellvi"], "-c", code], check=True)
    return path, "batch"


def run_worker(lib: str, data: Path, batch_key: str, epochs: int, out: Path, *extra: str) -> dict:
    cmd = [
        PY[lib],
        str(HERE / "worker.py"),
        "--lib",
        lib,
        "--data",
        str(data),
        "--epochs",
        str(epochs),
        "--batch-key",
        batch_key,
        "--out",
        str(out),
        *extra,
    ]
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return json.loads(out.read_text())


def summarise(runs: list[dict]) -> dict:
    keys = [
        "epoch_s",
        "train_cells_per_s",
        "latent_s",
        "normalized_expression_s",
        "peak_rss_mib",
        "import_s",
        "heldout_elbo_per_cell",
        "other_procs_cpu_frac",
        "train_s",
    ]
    out = {k: float(np.median([r[k] for r in runs])) for k in keys} | {"runs": len(runs)}
    out["first_epoch_s"] = float(np.median([r["epoch_s_all"][0] for r in runs]))  # compilation lands here
    return out


def compare(name: str, repeats: int, epochs: int, config: str, tmp: Path, fused: str) -> dict:
    data, batch_key = dataset(name)
    runs: dict[str, list] = {"cellvi": [], "scvi": []}
    for i in range(repeats):
        for lib in ("cellvi", "scvi"):
            extra = ["--config", config] + (["--fused", fused] if lib == "cellvi" else [])
            runs[lib].append(run_worker(lib, data, batch_key, epochs, tmp / f"{name}_{lib}_{i}.json", *extra))
    c, s = summarise(runs["cellvi"]), summarise(runs["scvi"])
    return {
        "dataset": name,
        "config": config,
        "epochs": epochs,
        "batch_size": 128,
        "cellvi": c,
        "scvi": s,
        "fused": fused,
        "train_speedup": c["train_cells_per_s"] / s["train_cells_per_s"],
        "wall_speedup": s["train_s"] / c["train_s"],
        "latent_speedup": s["latent_s"] / c["latent_s"],
        "normalized_expression_speedup": s["normalized_expression_s"] / c["normalized_expression_s"],
        "rss_ratio": c["peak_rss_mib"] / s["peak_rss_mib"],
        "heldout_elbo_rel_diff": (c["heldout_elbo_per_cell"] - s["heldout_elbo_per_cell"])
        / abs(s["heldout_elbo_per_cell"]),
        "raw": runs,
    }


def time_to_quality(name: str, epochs: int, tmp: Path) -> dict:
    data, batch_key = dataset(name)
    scvi = run_worker("scvi", data, batch_key, epochs, tmp / "ttq_scvi.json", "--config", "defaults")
    target = scvi["heldout_elbo_per_cell"]
    cellvi = run_worker(
        "cellvi",
        data,
        batch_key,
        4 * epochs,
        tmp / "ttq_cellvi.json",
        "--config",
        "defaults",
        "--until-elbo",
        str(target),
    )
    return {
        "dataset": name,
        "scvi_epochs": epochs,
        "target_heldout_elbo": target,
        "scvi_train_s": scvi["train_s"],
        "cellvi_epochs_to_target": cellvi["epochs_run"],
        "cellvi_reached": cellvi["heldout_elbo_per_cell"] >= target,
        "cellvi_train_s": float(cellvi["epoch_s_all"] and sum(cellvi["epoch_s_all"])),
        "speedup": scvi["train_s"] / max(sum(cellvi["epoch_s_all"]), 1e-9),
    }


def markdown(results: dict) -> str:
    lines = [
        f"# cellvi vs scvi-tools {results['scvi_version']}: speed",
        "",
        results["machine"],
        "",
        "| data | config | cellvi fused_kernels | epochs | runs | s/epoch cellvi | s/epoch scvi | train speed-up "
        "| first epoch cellvi / scvi (s) | whole train() speed-up | latent speed-up "
        "| normexpr speed-up | peak RSS cellvi / scvi (MiB) | held-out ELBO cellvi / scvi | other CPU |",
        "|" + "---|" * 15,
    ]
    for r in results["comparisons"]:
        c, s = r["cellvi"], r["scvi"]
        lines.append(
            f"| {r['dataset']} | {r['config']} | {r.get('fused', '?')} | {r['epochs']} | {c['runs']} "
            f"| {c['epoch_s']:.2f} | {s['epoch_s']:.2f} "
            f"| **{r['train_speedup']:.2f}x** ({c['train_cells_per_s']:.0f} vs {s['train_cells_per_s']:.0f} cells/s) "
            f"| {c['first_epoch_s']:.1f} / {s['first_epoch_s']:.1f} | {r['wall_speedup']:.2f}x "
            f"| {r['latent_speedup']:.2f}x | {r['normalized_expression_speedup']:.2f}x "
            f"| {c['peak_rss_mib']:.0f} / {s['peak_rss_mib']:.0f} | {c['heldout_elbo_per_cell']:.2f} / "
            f"{s['heldout_elbo_per_cell']:.2f} ({100 * r['heldout_elbo_rel_diff']:+.2f}%) "
            f"| {max(c['other_procs_cpu_frac'], s['other_procs_cpu_frac']):.2f} |"
        )
    for t in results.get("time_to_quality", []):
        lines += [
            "",
            f"Time to quality on {t['dataset']}: scvi-tools trained {t['scvi_epochs']} epochs at defaults "
            f"in {t['scvi_train_s']:.1f} s, reaching held-out ELBO {t['target_heldout_elbo']:.2f}; cellvi at "
            f"defaults reached it after {t['cellvi_epochs_to_target']} epochs, {t['cellvi_train_s']:.1f} s "
            f"(reached: {t['cellvi_reached']}): **{t['speedup']:.2f}x**.",
        ]
    lines += [
        "",
        "Medians over runs; each run is its own process; libraries alternate. 's/epoch' is the median "
        "over epochs after the first (the issue's definition); the first epoch holds torch.compile's "
        "compilation when fused_kernels is on, and 'whole train() speed-up' is the ratio of the whole "
        "train() calls, compilation and validation included. 'other CPU' is the share of CPU other "
        "processes used during training (0 = quiet machine).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--datasets",
        nargs="*",
        default=["sim20k", "mouse10k", "sim200k"],
        help="none (an empty list) with --time-to-quality runs only that",
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--epochs", type=int, default=6, help="epochs per run (sim200k uses 3)")
    p.add_argument("--configs", nargs="+", default=["same"], choices=["same", "defaults"])
    p.add_argument(
        "--fused",
        default="on",
        choices=["auto", "on", "off"],
        help="cellvi fused_kernels; 'on' is what train() picks by itself at default epochs",
    )
    p.add_argument("--time-to-quality", action="store_true")
    p.add_argument("--ttq-dataset", default="sim20k")
    p.add_argument("--ttq-epochs", type=int, default=50)
    p.add_argument("--out", default=str(HERE / "results" / "speed"))
    a = p.parse_args()
    tmp = HERE / "data" / "runs"
    tmp.mkdir(parents=True, exist_ok=True)
    scvi_version = subprocess.run(
        [PY["scvi"], "-c", "import scvi; print(scvi.__version__)"], capture_output=True, text=True
    ).stdout.strip()
    results = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}; 2 torch threads per run; no GPU",
        "scvi_version": scvi_version,
        "comparisons": [],
        "time_to_quality": [],
    }
    for name in a.datasets:
        for config in a.configs:
            epochs = 3 if name == "sim200k" else a.epochs
            repeats = min(a.repeats, 2) if name == "sim200k" else a.repeats
            results["comparisons"].append(compare(name, repeats, epochs, config, tmp, a.fused))
            print(markdown(results), file=sys.stderr)
    if a.time_to_quality:
        results["time_to_quality"].append(time_to_quality(a.ttq_dataset, a.ttq_epochs, tmp))
    Path(a.out + ".json").write_text(json.dumps(results, indent=1))
    Path(a.out + ".md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
