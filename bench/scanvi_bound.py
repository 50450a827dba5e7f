"""scANVI's bound with and without the observed labels: which integrates better (#16)?

scvi-tools 1.4.2's ``SCANVAE.loss`` averages the cell type ``y`` under the classifier ``q(y | z1)`` in the
bound for *every* cell, labelled or not; labels reach its model through the classification loss only.
cellvi's bound used a labelled cell's observed ``y`` (the M1+M2 bound of Kingma et al. 2014). This script
measures the difference, paired: per seed one cellvi SCVI at its defaults (as bench/integration_worker.py
trains it, every cell labelled), then two SCANVIs from it at their defaults, started from the same random
state: ``labels_in_bound=True`` (observed labels in the bound) and ``False`` (scvi-tools' bound). The
latents are scored as bench/integration.py scores them (``cellvi.analysis.benchmark_integration``, exact
kNN, unscaled totals, log-normalised 50-PC PCA as the unintegrated embedding). One torch thread per run.

    .venv/bin/python bench/scanvi_bound.py run --dataset cellbench_3celllines_2protocols --seeds 0 1 2 3
    .venv/bin/python bench/scanvi_bound.py summarise

``run`` writes one CSV per call to bench/data/scanvi_bound/; ``summarise`` puts every CSV together into
bench/results/scanvi_bound.{json,md}: per dataset the mean ± sd of each variant, the paired difference
(mean ± its standard error, paired t-test), and scvi-tools SCANVI's per-seed totals from
bench/results/integration_<dataset>.json for reference.
"""

from __future__ import annotations

import argparse
import json
import random
import time

import numpy as np
import pandas as pd

from schedule_integration import HERE, KEYS, METRICS, load_labelled, score

RUNS = HERE / "data" / "scanvi_bound"
VARIANTS = {"observed labels in the bound": True, "y averaged in the bound (scvi-tools 1.4.2)": False}


def run(dataset: str, seeds: list) -> None:
    import torch

    import cellvi

    torch.set_num_threads(1)
    adata, batch_key, label_key = load_labelled(dataset)
    for seed in seeds:
        cellvi.settings.seed = seed  # as bench/integration_worker.py: SCVI, then SCANVI, no reseeding between
        model = _train_scvi(cellvi, adata, batch_key)
        keys, seconds = [], {}
        state = (torch.random.get_rng_state(), np.random.get_state(), random.getstate())
        for name, in_bound in VARIANTS.items():
            torch.random.set_rng_state(state[0]), np.random.set_state(state[1]), random.setstate(state[2])
            start = time.perf_counter()
            scanvi = cellvi.model.SCANVI.from_scvi_model(model, unlabeled_category="Unknown", labels_key=label_key)
            scanvi.train(enable_progress_bar=False, plan_kwargs={"labels_in_bound": in_bound})
            key = f"{name}|{seed}"
            adata.obsm[key] = scanvi.get_latent_representation()
            seconds[key] = time.perf_counter() - start
            keys.append(key)
            print(dataset, seed, name, f"{seconds[key]:.0f} s", flush=True)
        df = score(adata, keys, batch_key, label_key)
        df["dataset"], df["variant"] = dataset, [k.split("|")[0] for k in df.index]
        df["seed"], df["seconds"] = seed, [seconds[k] for k in df.index]
        RUNS.mkdir(parents=True, exist_ok=True)
        df.to_csv(RUNS / f"{dataset}_{seed}.csv", index=False)


def _train_scvi(cellvi, adata, batch_key: str):
    start = time.perf_counter()
    cellvi.model.SCVI.setup_anndata(adata, batch_key=batch_key)
    model = cellvi.model.SCVI(adata)
    model.train(enable_progress_bar=False)
    model.get_latent_representation()  # as the worker does: its draws come before SCANVI's
    print("SCVI", f"{time.perf_counter() - start:.0f} s", flush=True)
    return model


def summarise() -> None:
    from scipy.stats import ttest_rel

    rows = pd.concat([pd.read_csv(p) for p in sorted(RUNS.glob("*.csv"))], ignore_index=True)
    names = list(VARIANTS)
    out, lines = {"per_seed": rows.to_dict("records"), "datasets": []}, []
    lines += [
        "# scANVI's bound: observed labels in it, or y averaged under the classifier (scvi-tools 1.4.2)",
        "",
        "Per seed one cellvi SCVI at its defaults, then both SCANVIs from it at their defaults (every cell labelled, "
        "the same random state). scib-metrics Benchmarker, exact kNN, unscaled totals; mean ± sd over seeds; "
        "difference = second variant minus first, paired over seeds (mean ± standard error, paired t-test). "
        "Command: `.venv/bin/python bench/scanvi_bound.py run --dataset D --seeds ...`, then `summarise`.",
        "",
    ]
    for dataset, g in rows.groupby("dataset"):
        a = g[g["variant"] == names[0]].set_index("seed")
        b = g[g["variant"] == names[1]].set_index("seed")
        seeds = sorted(set(a.index) & set(b.index))
        a, b = a.loc[seeds], b.loc[seeds]
        entry = {"dataset": dataset, "seeds": seeds, "variants": {}}
        lines += [f"## {dataset} ({len(seeds)} seeds: {', '.join(map(str, seeds))})", ""]
        lines += ["| | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
        for name, d in ((names[0], a), (names[1], b)):
            entry["variants"][name] = {k: [float(d[k].mean()), float(d[k].std(ddof=1))] for k in METRICS}
            lines.append(
                f"| {name} | " + " | ".join(f"{d[k].mean():.3f} ± {d[k].std(ddof=1):.3f}" for k in METRICS) + " |"
            )
        diff = {}
        for k in METRICS:
            delta = b[k].to_numpy() - a[k].to_numpy()
            p = float(ttest_rel(b[k], a[k]).pvalue) if len(seeds) > 1 and delta.std() > 0 else float("nan")
            diff[k] = [float(delta.mean()), float(delta.std(ddof=1) / np.sqrt(len(delta))), p]
        entry["difference"] = diff
        lines.append(
            "| difference | " + " | ".join(f"{m:+.3f} ± {s:.3f} (p {p:.2g})" for m, s, p in diff.values()) + " |"
        )
        ref = HERE / "results" / f"integration_{dataset}.json"
        if ref.exists():
            per_seed = pd.DataFrame(json.loads(ref.read_text())["per_seed"])
            for method in ("scvi-tools SCANVI", "cellvi SCANVI"):
                t = per_seed[per_seed["method"] == method].set_index("seed")["Total"]
                entry[f"{method} Total, integration table"] = {int(s): float(v) for s, v in t.items()}
                lines.append(
                    f"\n{method} in bench/results/integration_{dataset}.md: Total {t.mean():.3f} ± {t.std():.3f} ({len(t)} seeds)."
                )
            same = [s for s in seeds if s in entry["cellvi SCANVI Total, integration table"]]
            if same:
                gap = max(abs(a.loc[s, "Total"] - entry["cellvi SCANVI Total, integration table"][s]) for s in same)
                lines.append(
                    f"Largest difference between the first variant here and that table's cellvi SCANVI on the same seeds: {gap:.2g}."
                )
        lines.append("")
        out["datasets"].append(entry)
    (HERE / "results" / "scanvi_bound.json").write_text(json.dumps(out, indent=1))
    (HERE / "results" / "scanvi_bound.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--dataset", default="cellbench_3celllines_2protocols", choices=list(KEYS))
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    sub.add_parser("summarise")
    a = ap.parse_args()
    if a.cmd == "run":
        run(a.dataset, a.seeds)
    summarise()


if __name__ == "__main__":
    main()
