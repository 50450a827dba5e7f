"""Differential-expression speed: cellvi vs scvi-tools 1.4.2 in the same run, at the same answer.

    python bench/de_speed.py                              # all parts at the issue's sizes
    python bench/de_speed.py --n-cells 50000 --runs 3     # a smaller one-vs-all set
    python bench/de_speed.py --parts ifnb fdr             # a subset
    python bench/de_speed.py --runs 3 --scvi-runs 2 --threads 1   # fewer (slow) scvi-tools one-vs-all runs

Parts (each library in its own process, this file run with ``--worker``; scvi-tools from
bench/.venv-scvi):
- ``onevsall``: one-vs-all change-mode DE over 20 clusters of ``--n-cells`` simulated cells x 2,000
  genes (models trained 1 epoch: DE time does not depend on model quality). Median seconds of
  ``--runs`` runs per library, and the peak RSS while DE ran (sampled every 20 ms) above the RSS
  before it. cellvi also runs its per-comparison reference path (what it returned before the shared,
  round-based path) twice with different seeds: overlap of the top 30 and 100 genes per cluster
  (ordered by proba_de, then |lfc_mean|) of the default path vs the reference, next to the reference
  vs itself (the Monte-Carlo noise floor).
- ``ifnb``: pbmc_ifnb_stimulation, stim vs ctrl, change mode, ``--ifnb-epochs`` epochs. Median seconds;
  the fraction of the top 30 up-regulated genes in the MSigDB Hallmark IFN-alpha response set (ISG
  precision) for each path and library, and the same overlaps as above.
- ``fdr``: cellvi.data.simulate (3,000 cells x 1,000 genes, known DE genes), type0 vs type1: the genes
  called at posterior expected FDR 0.05 and the share of them that is not truly DE, AUROC, for the
  default path and the reference.

Writes bench/results/de_speed.{json,md} (the markdown by bench/de_speed_report.py); the one-vs-all
results of an earlier run at another cell count are carried over from the file it replaces into a table
of earlier sizes. Each worker records the CPU share other processes took while it ran ("other CPU"): on a busy shared machine the seconds are noisy, the ratios less so.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from de_speed_report import TOPS, earlier_sizes, pairwise_summary, write_markdown

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
RESULTS = HERE / "results"
SHARED = Path(os.environ.get("CELLVI_DATA_DIR", HERE.parent.parent / "shared" / "data"))
PYTHONS = {"cellvi": sys.executable, "scvi": str(HERE / ".venv-scvi" / "bin" / "python")}
SAME = {"n_hidden": 128, "n_latent": 10, "n_layers": 1, "gene_likelihood": "zinb"}


# ---------------------------------------------------------------------------------------- worker side
def busy_cpu_s():
    """(CPU seconds of all processes on the machine, of this process) so far."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    own = resource.getrusage(resource.RUSAGE_SELF)
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK"), own.ru_utime + own.ru_stime


class RssPeak:
    """Peak resident set size (MiB) of this process while the ``with`` block runs, sampled every 20 ms."""

    def __enter__(self):
        self.before = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    @staticmethod
    def _rss() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _poll(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def ranked(table, by_group: bool):
    """Gene order per comparison: proba_de, then |lfc_mean| (ties at 1.0 are common)."""
    t = table.assign(_abs=table["lfc_mean"].abs())
    groups = t["group1"].astype(str) if by_group else None
    if groups is None:
        up = t[t["lfc_mean"] > 0].sort_values(["proba_de", "lfc_mean"], ascending=False)
        return {"all": list(t.sort_values(["proba_de", "_abs"], ascending=False).index), "up": list(up.index)}
    return {
        g: list(t[groups == g].sort_values(["proba_de", "_abs"], ascending=False).index[: max(TOPS)])
        for g in groups.unique()
    }


def worker(a):
    import anndata as ad
    import torch

    torch.set_num_threads(a.threads)
    lib = importlib.import_module(a.lib)
    if a.lib == "scvi":
        import logging

        lib.settings.verbosity = logging.WARNING
        lib.settings.num_threads = a.threads
    else:
        lib.settings.progress_bar = False
    lib.settings.seed = 0
    adata = ad.read_h5ad(a.data)
    if a.task == "fdr":
        adata.obs["cell_type"] = adata.obs["cell_type"].astype(str)
    lib.model.SCVI.setup_anndata(adata, batch_key=a.batch_key or None)
    model = lib.model.SCVI(adata, **SAME)
    t = time.perf_counter()
    model.train(max_epochs=a.epochs, batch_size=a.train_batch, train_size=1.0, enable_progress_bar=False)
    info = {
        "lib": a.lib,
        "task": a.task,
        "train_s": time.perf_counter() - t,
        "n_cells": adata.n_obs,
        "n_genes": adata.n_vars,
        "epochs": a.epochs,
    }
    kw = {"groupby": a.groupby, "mode": "change"}
    if a.group1:
        kw.update(group1=a.group1, group2=a.group2)
    by_group = a.group1 is None

    def run(fn, seed):
        lib.settings.seed = seed
        cpu0 = busy_cpu_s()
        with RssPeak() as rss:
            t = time.perf_counter()
            res = fn()
            dt = time.perf_counter() - t
        cpu1 = busy_cpu_s()
        other = max(0.0, (cpu1[0] - cpu0[0]) - (cpu1[1] - cpu0[1])) / (dt * (os.cpu_count() or 1))
        return res, {"s": dt, "rss_before_mib": rss.before, "rss_peak_mib": rss.peak, "other_cpu": other}

    runs, orders = [], {}
    for i in range(a.runs):
        res, r = run(lambda: model.differential_expression(**kw, silent=True), i)
        runs.append(r)
        if i == 0:
            orders["default"] = ranked(res, by_group)
            if "n_pairs" in res:
                info["n_pairs"] = [int(res["n_pairs"].min()), int(res["n_pairs"].max())]
                info["mc_error_max"] = float(res["mc_error"].max())
            if a.task == "fdr":
                orders["default_table"] = res
    info["runs"] = runs
    if a.lib == "cellvi" and a.ref_runs:  # the same path at the reference's precision: n_samples pairs
        res, r = run(lambda: model.differential_expression(**kw, silent=True, mc_error=None), 50)
        info["exact_runs"] = [r]
        orders["exact"] = ranked(res, by_group)
    if a.lib == "cellvi" and a.ref_runs:
        from cellvi.model import _de

        ref = []
        for i in range(a.ref_runs):
            res, r = run(
                lambda: _de.differential_expression_per_comparison(
                    model,
                    None,
                    _de.DERequest(groupby=a.groupby, group1=kw.get("group1"), group2=kw.get("group2"), mode="change"),
                ),
                100 + i,
            )
            ref.append(r)
            orders[f"reference{i}"] = ranked(res, by_group)
            if a.task == "fdr" and i == 0:
                orders["reference_table"] = res
        info["reference_runs"] = ref
    if a.task == "fdr":
        truth = adata.var["de_lfc_type0"] != adata.var["de_lfc_type1"]
        from sklearn.metrics import roc_auc_score

        for name in ("default", "reference"):
            t = orders.pop(f"{name}_table")
            called = t.index[t["is_de_fdr_0.05"].to_numpy()]
            info[f"fdr_{name}"] = {
                "n_called": len(called),
                "false_discovery_share": float((~truth.loc[called]).mean()) if len(called) else 0.0,
                "auroc": float(roc_auc_score(truth.loc[t.index], t["proba_de"] + 1e-6 * t["lfc_mean"].abs())),
            }
    Path(a.out + ".orders.json").write_text(json.dumps(orders))
    Path(a.out + ".json").write_text(json.dumps(info, indent=1))
    print(json.dumps({k: v for k, v in info.items() if k != "runs"})[:800], flush=True)


# ---------------------------------------------------------------------------------------- driver side
def call(lib, task, data, out, args, **extra):
    cmd = [
        PYTHONS[lib],
        str(Path(__file__).resolve()),
        "--worker",
        "--lib",
        lib,
        "--task",
        task,
        "--data",
        str(data),
        "--out",
        str(out),
        "--threads",
        str(args.threads),
    ]
    for k, v in extra.items():
        if v is not None:
            cmd += [f"--{k.replace('_', '-')}", str(v)]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "OMP_WAIT_POLICY": "PASSIVE",
        "PYTHONPATH": str(HERE.parent / "src") if lib == "cellvi" else "",
    }
    subprocess.run(cmd, check=True, env=env)
    info = json.loads(Path(str(out) + ".json").read_text())
    info["orders"] = json.loads(Path(str(out) + ".orders.json").read_text())
    return info


def overlap(a: dict, b: dict, k: int) -> float:
    """Mean share of the top ``k`` genes common to two rankings, over comparisons."""
    return float(np.mean([len(set(a[g][:k]) & set(b[g][:k])) / k for g in a if g != "up"]))


def summary(info: dict) -> dict:
    def med(rs, key):
        return float(np.median([r[key] for r in rs]))

    out = {
        "train_s": info["train_s"],
        "runs": len(info["runs"]),
        "median_s": med(info["runs"], "s"),
        "all_s": [r["s"] for r in info["runs"]],
        "peak_rss_mib": max(r["rss_peak_mib"] for r in info["runs"]),
        "rss_before_mib": info["runs"][0]["rss_before_mib"],
        "de_rss_increase_mib": max(r["rss_peak_mib"] - r["rss_before_mib"] for r in info["runs"]),
        "other_cpu": med(info["runs"], "other_cpu"),
    }
    for k in ("n_pairs", "mc_error_max"):
        if k in info:
            out[k] = info[k]
    if "reference_runs" in info:
        ref = info["reference_runs"]
        out["reference"] = {
            "runs": len(ref),
            "median_s": med(ref, "s"),
            "all_s": [r["s"] for r in ref],
            "de_rss_increase_mib": max(r["rss_peak_mib"] - r["rss_before_mib"] for r in ref),
        }
        o = info["orders"]
        out["exact_5000_pairs_s"] = info["exact_runs"][0]["s"]
        for k in TOPS:
            out[f"overlap{k}_default_vs_reference"] = overlap(o["default"], o["reference0"], k)
            out[f"overlap{k}_exact_vs_reference"] = overlap(o["exact"], o["reference0"], k)
            if "reference1" in o:
                out[f"overlap{k}_reference_vs_reference"] = overlap(o["reference0"], o["reference1"], k)
    return out


def part_onevsall(args):
    import cellvi

    n = args.n_cells
    path = DATA / f"de_speed_{n}x2000_20groups.h5ad"
    if not path.exists():
        cellvi.data.simulate(n_cells=n, n_genes=2000, n_batches=1, n_cell_types=20, seed=1).write_h5ad(path)
    out = {"n_cells": n, "n_genes": 2000, "n_groups": 20, "train_epochs": 1}
    for lib in ("cellvi", "scvi"):
        info = call(
            lib,
            "onevsall",
            path,
            DATA / f"de_speed_onevsall_{lib}",
            args,
            epochs=1,
            train_batch=1024,
            groupby="cell_type",
            runs=args.runs if lib == "cellvi" else (args.scvi_runs or args.runs),
            ref_runs=2 if lib == "cellvi" else 0,
        )
        out[lib] = summary(info)
    out["speedup_vs_scvi"] = out["scvi"]["median_s"] / out["cellvi"]["median_s"]
    out["reference_speedup_vs_scvi"] = out["scvi"]["median_s"] / out["cellvi"]["reference"]["median_s"]
    return out


def part_ifnb(args):
    sys.path.insert(0, str(HERE))
    from de_benchmark import gene_sets

    alpha = gene_sets()["HALLMARK_INTERFERON_ALPHA_RESPONSE"]
    path = SHARED / "pbmc_ifnb_stimulation.h5ad"
    out = {"data": path.name, "epochs": args.ifnb_epochs}
    for lib in ("cellvi", "scvi"):
        info = call(
            lib,
            "pairwise",
            path,
            DATA / f"de_speed_ifnb_{lib}",
            args,
            epochs=args.ifnb_epochs,
            train_batch=128,
            groupby="condition",
            group1="stim",
            group2="ctrl",
            runs=args.runs,
            ref_runs=2 if lib == "cellvi" else 0,
        )
        s = summary(info)
        for name, order in info["orders"].items():
            up = order["up"]
            s[f"isg_precision_top30_{name}"] = float(np.mean([g in alpha for g in up[:30]]))
        out[lib] = s
        out["n_cells"], out["n_genes"] = info["n_cells"], info["n_genes"]
    out["speedup_vs_scvi"] = out["scvi"]["median_s"] / out["cellvi"]["median_s"]
    out["reference_speedup_vs_scvi"] = out["scvi"]["median_s"] / out["cellvi"]["reference"]["median_s"]
    return out


def part_fdr(args):
    import cellvi

    path = DATA / "de_speed_fdr_3000x1000.h5ad"
    cellvi.data.simulate(n_cells=3000, n_genes=1000, n_batches=2, n_cell_types=3, seed=0).write_h5ad(path)
    info = call(
        "cellvi",
        "fdr",
        path,
        DATA / "de_speed_fdr_cellvi",
        args,
        epochs=args.ifnb_epochs,
        train_batch=128,
        groupby="cell_type",
        group1="type0",
        group2="type1",
        runs=1,
        ref_runs=1,
        batch_key="batch",
    )
    return {
        "n_cells": 3000,
        "n_genes": 1000,
        "epochs": args.ifnb_epochs,
        **{k: info[k] for k in ("fdr_default", "fdr_reference")},
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", nargs="+", choices=["onevsall", "ifnb", "fdr"], default=["onevsall", "ifnb", "fdr"])
    p.add_argument("--n-cells", type=int, default=200_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--scvi-runs", type=int, default=None, help="scvi-tools one-vs-all runs (default: --runs)")
    p.add_argument("--ifnb-epochs", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS / "de_speed"))
    # worker arguments
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for name in ("lib", "task", "data", "groupby", "group1", "group2"):
        p.add_argument(f"--{name}", help=argparse.SUPPRESS)
    p.add_argument("--batch-key", default="", help=argparse.SUPPRESS)
    p.add_argument("--epochs", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--train-batch", type=int, default=1024, help=argparse.SUPPRESS)
    p.add_argument("--ref-runs", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    DATA.mkdir(exist_ok=True)
    RESULTS.mkdir(exist_ok=True)
    res = {
        "threads": args.threads,
        "command": "python bench/de_speed.py " + " ".join(argv or sys.argv[1:]),
        "machine": f"{os.cpu_count()} CPUs, shared with other jobs",
    }
    previous = Path(args.out + ".json")
    old = json.loads(previous.read_text()) if previous.exists() else {}
    if "onevsall" in args.parts:
        earlier = earlier_sizes(old, args.n_cells)
        if earlier:
            res["onevsall_earlier"] = earlier
    for key, value in old.items():  # the parts not rerun stay, each with the command that measured it
        part = key.removesuffix("_earlier").removesuffix("_reruns")
        if part in ("onevsall", "ifnb", "fdr") and part not in args.parts:
            res[key] = value
            if key == part:
                value.setdefault("command", old.get("command"))
    if "ifnb" in args.parts and "ifnb" in old:  # a rerun of the pairwise part keeps the ones it replaces
        res["ifnb_reruns"] = old.get("ifnb_reruns", []) + [pairwise_summary(old["ifnb"], old.get("command"))]
    for part in args.parts:
        res[part] = {"onevsall": part_onevsall, "ifnb": part_ifnb, "fdr": part_fdr}[part](args)
        res[part]["command"] = res["command"]
        print(part, json.dumps(res[part], default=float)[:1500], flush=True)
        Path(args.out + ".json").write_text(json.dumps(res, indent=1, default=float))
    write_markdown(res, Path(args.out + ".md"))


if __name__ == "__main__":
    main()
