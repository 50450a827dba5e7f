"""cellvi.autotune against SCVI's defaults on the shared labelled multi-batch sets, same trial budget per search.

Per data set:

1. Split: 30% of the cells, drawn within each (batch, cell type) group with a fixed seed (--split-seed), are
   the test cells. Nothing of the search sees them: it runs on the other 70% (the "tune" cells), where
   ``tune`` holds out its own 10% validation cells.
2. Searches on the tune cells, each with ``--n-trials`` trials of at most ``--max-epochs`` epochs, one
   process, one torch thread, default search space, TPE sampler (seed 0):
   - ``objective="elbo"`` (validation ELBO, median pruning);
   - ``objective="both"`` (validation ELBO and scIB total of the tune cells' latent; no pruning, as Optuna
     cannot prune multi-objective trials): its Pareto front is reported, and its trial with the best scIB
     total is the "scIB-tuned" configuration (a separate scIB-only search of the same budget did not fit the
     CPU budget; ``--objectives elbo scib both`` runs it too).
3. Evaluation: SCVI at its defaults and each tuned configuration, trained on the tune cells for
   ``--max-epochs`` epochs with each of ``--seeds`` (model seeds), scored on the test cells: ELBO per cell
   and the scIB total of the test cells' latent (cellvi.analysis.benchmark_integration: scib-metrics'
   Benchmarker, exact kNN, unscaled, 0.6 bio + 0.4 batch). Means +- sample sd over seeds.

cellbench_3celllines_2protocols is cut to 2,000 highly variable genes (scanpy seurat_v3 on the tune cells'
counts) to keep the run inside the CPU budget. The data sets run in parallel, one process each.

    PYTHONPATH=src python bench/autotune.py --n-trials 12 --max-epochs 80 --seeds 0 1 2

``--default-epochs 400`` also evaluates the defaults trained for that many epochs (SCVI's own default
for fewer than 20,000 cells). ``--part FILE --sets NAME`` runs one data set in this process (e.g. with other ``--objectives``) and
``--merge FILE ...`` writes the results from such parts. Writes bench/results/autotune.{json,md} and autotune_<set>_<objective>_{objective_vs_params,param_importances}.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from worker import peak_rss_mib  # bench/ is on the path when run as a script

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
DATA = Path(os.environ.get("CELLVI_DATA_DIR", REPO.parent / "shared" / "data"))
SETS = {"pbmc_3chemistries": None, "cellbench_3celllines_2protocols": 2000}  # name -> HVGs (None: all genes)
BATCH, LABEL = "batch", "cell_type"


def split(adata, frac: float, seed: int) -> np.ndarray:
    """Boolean mask of test cells: ``frac`` of each (batch, label) group, at least one of groups of >= 2."""
    rng = np.random.default_rng(seed)
    test = np.zeros(adata.n_obs, bool)
    groups = adata.obs[BATCH].astype(str) + "|" + adata.obs[LABEL].astype(str)
    for g in np.unique(groups):
        idx = np.flatnonzero(groups.to_numpy() == g)
        k = int(round(frac * len(idx))) if len(idx) > 1 else 0
        test[rng.choice(idx, size=max(k, 1 if len(idx) > 1 else 0), replace=False)] = True
    return test


def prepare(name: str, frac: float, seed: int):
    import anndata
    import scanpy as sc

    full = anndata.read_h5ad(DATA / f"{name}.h5ad")
    test = split(full, frac, seed)
    if SETS[name]:
        hvg = sc.pp.highly_variable_genes(
            full[~test].copy(), n_top_genes=SETS[name], flavor="seurat_v3", batch_key=BATCH, inplace=False
        )
        full = full[:, hvg["highly_variable"].to_numpy()].copy()
    return full[~test].copy(), full[test].copy()


def trial_rows(trials) -> list[dict]:
    keep = [c for c in trials.columns if c in ("number", "state", "elbo_validation", "scib_total", "duration_s")]
    keep += [c for c in trials.columns if c.startswith("params_")]
    out = trials[keep].rename(columns=lambda c: c.removeprefix("params_"))
    return json.loads(out.to_json(orient="records"))


def run_set(name: str, args) -> dict:
    """Searches and evaluation of one data set (in its own process); returns a JSON-able dict."""
    import torch

    torch.set_num_threads(1)
    import cellvi
    from cellvi.analysis import benchmark_integration
    from cellvi.autotune import tune
    from cellvi.model import SCVI

    cellvi.settings.progress_bar = False
    tune_set, test_set = prepare(name, args.test_frac, args.split_seed)
    out = {"data": name, "n_tune": tune_set.n_obs, "n_test": test_set.n_obs, "n_genes": tune_set.n_vars}
    out["searches"], configs = {}, {"default": {}}
    for objective in args.objectives:
        work = Path(tempfile.mkdtemp(prefix=f"tune-{name}-{objective}-"))
        c0 = time.process_time()
        res = tune(
            tune_set,
            objective=objective,
            n_trials=args.n_trials,
            n_jobs=1,
            max_epochs=args.max_epochs,
            batch_key=BATCH,
            label_key=LABEL if objective != "elbo" else None,
            seed=0,
            output_dir=work,
            train_best=False,
            threads_per_job=1,
        )
        search = {
            "search_wall_s": round(res.search_s, 1),
            "search_cpu_s": round(time.process_time() - c0, 1),
            "trial_states": res.trials["state"].value_counts().to_dict(),
            "trials": trial_rows(res.trials),
        }
        if objective == "both":
            search["pareto"] = trial_rows(res.pareto)
            done = res.trials[res.trials["state"] == "COMPLETE"]
            best = {"elbo": done.loc[done["elbo_validation"].idxmax()], "scib": done.loc[done["scib_total"].idxmax()]}
            for key, row in best.items():
                params = {
                    k.removeprefix("params_"): getattr(v, "item", lambda v=v: v)()
                    for k, v in row.items()
                    if k.startswith("params_")
                }
                search[f"best_{key}"] = {"number": int(row["number"]), "params": params}
            if "scib" not in args.objectives:
                configs["scib (from both)"] = search["best_scib"]["params"]
        else:
            search["best_params"] = res.best_params
            search["best_values"] = res.best_values
            configs[objective] = res.best_params
        for fig in ("objective_vs_params", "param_importances"):
            if (work / f"{fig}.png").exists():
                shutil.copy(work / f"{fig}.png", RESULTS / f"autotune_{name}_{objective}_{fig}.png")
        out["searches"][objective] = search
        shutil.rmtree(work, ignore_errors=True)
        print(name, objective, json.dumps({k: v for k, v in search.items() if k != "trials"}, default=str), flush=True)

    from cellvi.autotune.space import split as split_params

    evals, latents = [], {}
    if args.default_epochs:
        if not args.objectives:  # a part that only adds this baseline
            configs = {}
        configs[f"default, {args.default_epochs} epochs"] = {}
    for label, params in configs.items():
        init, plan, train = split_params(params, SCVI)
        epochs = args.default_epochs if label.endswith(" epochs") else args.max_epochs
        for seed in args.seeds:
            cellvi.settings.seed = seed
            SCVI.setup_anndata(tune_set, batch_key=BATCH)
            model = SCVI(tune_set, **init)
            c0, t0 = time.process_time(), time.perf_counter()
            model.train(max_epochs=epochs, plan_kwargs=plan, enable_progress_bar=False, **train)
            row = {"config": label, "seed": seed, "train_s": round(time.perf_counter() - t0, 1)}
            row["train_cpu_s"] = round(time.process_time() - c0, 1)
            SCVI.setup_anndata(test_set, batch_key=BATCH)
            row["test_elbo"] = float(model.get_elbo(test_set))
            latents[f"{label}|{seed}"] = model.get_latent_representation(test_set, obsm_key=None)
            evals.append(row)
            print(name, json.dumps(row), flush=True)
    keys = list(latents)
    test_set.obsm.update({f"Z{i}": latents[k] for i, k in enumerate(keys)})
    c0 = time.process_time()
    scib = benchmark_integration(test_set, [f"Z{i}" for i in range(len(keys))], BATCH, LABEL, neighbors="exact")
    out["scib_eval_cpu_s"] = round(time.process_time() - c0, 1)
    for row, i in zip(evals, range(len(keys))):
        row["test_scib_total"] = float(scib.loc[f"Z{i}", "Total"])
        row["test_bio"] = float(scib.loc[f"Z{i}", "Bio conservation"])
        row["test_batch"] = float(scib.loc[f"Z{i}", "Batch correction"])
    out["configs"], out["evals"] = configs, evals
    out["cpu_s"] = round(time.process_time(), 1)
    out["peak_rss_mib"] = round(peak_rss_mib())
    return out


def command_args() -> list[str]:
    """sys.argv without the --note text."""
    args = sys.argv[1:]
    return args[: args.index("--note")] + args[args.index("--note") + 2 :] if "--note" in args else args


def merge_parts(parts: list[dict]) -> list[dict]:
    """One part per data set: searches, configurations and evaluations of parts of the same set are pooled
    (the scIB metrics are unscaled, so an embedding's scores do not depend on the others of its call)."""
    merged: dict[str, dict] = {}
    for part in parts:
        if part["data"] not in merged:
            merged[part["data"]] = part
            continue
        into = merged[part["data"]]
        into["searches"].update(part["searches"])
        into["configs"].update(part["configs"])
        seen = {(e["config"], e["seed"]) for e in into["evals"]}
        into["evals"] += [e for e in part["evals"] if (e["config"], e["seed"]) not in seen]
        into["cpu_s"] = into.get("cpu_s", 0) + part.get("cpu_s", 0)
    return list(merged.values())


def summarize(evals: list[dict]) -> list[dict]:
    import pandas as pd

    df = pd.DataFrame(evals)
    rows = []
    for cfg, g in df.groupby("config", sort=False):
        row = {"config": cfg, "n_seeds": len(g)}
        for col in ("test_elbo", "test_scib_total", "test_bio", "test_batch", "train_s"):
            row[col] = [float(g[col].mean()), float(g[col].std(ddof=1)) if len(g) > 1 else float("nan")]
        rows.append(row)
    return rows


def fmt(ms, digits=1) -> str:
    return f"{ms[0]:.{digits}f} ± {ms[1]:.{digits}f}"


def num(v) -> str:
    if not isinstance(v, float):
        return str(v)
    return f"{v:.1f}" if abs(v) >= 100 else f"{v:.3g}"


def short(params: dict) -> str:
    abbrev = {"n_epochs_kl_warmup": "kl_warmup", "gene_likelihood": "lik", "dropout_rate": "dropout"}
    parts = []
    for k, v in params.items():
        parts.append(f"{abbrev.get(k, k)}={num(v)}")
    return ", ".join(parts)


def write(parts: list[dict], args, wall_s: float, load: tuple | None) -> None:
    res = {
        "command": "PYTHONPATH=src python bench/autotune.py " + " ".join(command_args()),
        "n_trials": args.n_trials,
        "max_epochs": args.max_epochs,
        "objectives": args.objectives,
        "seeds": args.seeds,
        "test_frac": args.test_frac,
        "wall_s": None if wall_s != wall_s else round(wall_s),
        "note": args.note,
        "load_average_start_end": load,
        "sets": parts,
    }
    for p in parts:
        p["summary"] = summarize(p["evals"])
    (RESULTS / "autotune.json").write_text(json.dumps(res, indent=1, default=str))
    md = [
        "# cellvi.autotune: tuned vs defaults",
        "",
        f"`{res['command']}`. Per data set: {args.n_trials} trials per search, at most {args.max_epochs} epochs "
        "per trial, 1 process, 1 torch thread; default search space; TPE sampler. 30% of the cells "
        f"(stratified by batch x cell type, split seed {args.split_seed}) are test cells that no search "
        "saw; searches and final trainings use the other 70% (the search validates on 10% of those). "
        f"Final models: trained on the tune cells for {args.max_epochs} epochs with model seeds {args.seeds}; "
        "defaults = SCVI() at the same epochs. Test ELBO: nats per test cell (higher is better). Test scIB: "
        "total of the test cells' latent (scib-metrics Benchmarker, exact kNN, unscaled, 0.6 bio + 0.4 batch). "
        "Mean ± sd over seeds.",
        "",
        "Machine: shared 2-core machine with other helpers' jobs"
        + (f" (load average at start/end {load}); the data sets ran in parallel" if load else "")
        + ". Times are noisy; CPU seconds are this benchmark's own.",
        "",
    ]
    if args.note:
        md += [args.note, ""]
    for p in parts:
        md += [f"## {p['data']} ({p['n_tune']} tune + {p['n_test']} test cells, {p['n_genes']} genes)", ""]
        md += ["| configuration | test ELBO | test scIB total | bio | batch | train s |", "|---|---|---|---|---|---|"]
        md += [
            f"| {r['config']} | {fmt(r['test_elbo'])} | {fmt(r['test_scib_total'], 3)} | {fmt(r['test_bio'], 3)} "
            f"| {fmt(r['test_batch'], 3)} | {fmt(r['train_s'], 0)} |"
            for r in p["summary"]
        ]
        md += [
            "",
            "| search | wall s | CPU s | trials | best configuration (both: its best-scIB trial) |",
            "|---|---|---|---|---|",
        ]
        for obj, s in p["searches"].items():
            best = s.get("best_params") or s["best_scib"]["params"]  # "both": its best scIB trial
            md.append(f"| {obj} | {s['search_wall_s']} | {s['search_cpu_s']} | {s['trial_states']} | {short(best)} |")
        for obj, s in p["searches"].items():
            md += [
                "",
                f"Trials of the `{obj}` search (plots: autotune_{p['data']}_{obj}_*.png; a PRUNED trial's ELBO "
                "is its validation ELBO at the epoch where it was stopped):",
                "",
            ]
            cols = [c for c in s["trials"][0] if c not in ("duration_s",)]
            md += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            for t in s["trials"]:
                cells = [num(t[c]) for c in cols]
                md.append("| " + " | ".join(cells) + " |")
            if "pareto" in s:
                md += ["", "Pareto front (trial: validation ELBO, scIB total of the tune cells):", ""]
                md += [f"- trial {t['number']}: {t['elbo_validation']:.1f}, {t['scib_total']:.3f}" for t in s["pareto"]]
        md.append("")
    (RESULTS / "autotune.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n-trials", type=int, default=12)
    p.add_argument("--max-epochs", type=int, default=100)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--sets", nargs="+", default=list(SETS))
    p.add_argument("--default-epochs", type=int, help="also evaluate SCVI's defaults trained this many epochs")
    p.add_argument("--objectives", nargs="*", default=["elbo", "both"], choices=["elbo", "scib", "both"])
    p.add_argument("--test-frac", type=float, default=0.3)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--part", help="run only the first of --sets in this process and write its JSON to PART")
    p.add_argument("--merge", nargs="+", help="write the results from these PART JSON files (no runs)")
    p.add_argument("--note", default="", help="a sentence for the results (e.g. how the parts were run)")
    args = p.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    if args.part:
        Path(args.part).write_text(json.dumps(run_set(args.sets[0], args), default=str))
        return
    if args.merge:
        parts = merge_parts([json.loads(Path(f).read_text()) for f in args.merge])
        write(parts, args, float("nan"), None)
        return
    load0 = round(os.getloadavg()[0], 1)
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="autotune-bench-"))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = []
    for name in args.sets:
        cmd = [sys.executable, __file__, *sys.argv[1:], "--sets", name, "--part", str(tmp / f"{name}.json")]
        procs.append(subprocess.Popen(cmd, env=env))
    if any(proc.wait() for proc in procs):
        raise SystemExit("a data set's run failed (see above)")
    parts = [json.loads((tmp / f"{name}.json").read_text()) for name in args.sets]
    write(parts, args, time.perf_counter() - t0, (load0, round(os.getloadavg()[0], 1)))


if __name__ == "__main__":
    main()
