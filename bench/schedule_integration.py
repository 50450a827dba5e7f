"""Integration quality (scIB) of cellvi SCVI under each training schedule or precision, on a labelled shared set.

``train(schedule="fast")`` reaches scvi-tools' held-out ELBO far sooner on 20,000 simulated cells
(bench/results/speed_ttq.md). Whether it also integrates batches as well is a separate question: this
script trains cellvi SCVI with a schedule (and optionally a number of epochs) for the given seeds and
scores the latents as bench/integration.py does (``cellvi.analysis.benchmark_integration``, exact kNN,
unscaled totals, log-normalised 50-PC PCA as the unintegrated embedding). One torch thread per run.

    .venv/bin/python bench/schedule_integration.py run --dataset pbmc_3chemistries --schedule fast --seeds 0 1 2
    .venv/bin/python bench/schedule_integration.py run --dataset pbmc_3chemistries --schedule fast --max-epochs 400
    .venv/bin/python bench/schedule_integration.py run --dataset cellbench_3celllines_2protocols \
        --schedule scvi-tools --precision bf16-mixed --seeds 0 1 2 3 4 5 6 7
    .venv/bin/python bench/schedule_integration.py run --dataset pbmc_3chemistries --schedule fast --max-epochs 100 \
        --plan '{"n_epochs_kl_warmup": 20, "lr": 0.004}'
    .venv/bin/python bench/schedule_integration.py summarise

``run`` writes one CSV of scores per call to bench/data/schedule_integration/; ``summarise`` puts them
together with the per-seed scores already in bench/results/schedule_integration.json (so seeds can be
added in pieces, on another machine too) and compares them with the default schedule's per-seed scores
in bench/results/integration_<dataset>.json: bench/results/schedule_integration.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
RUNS = HERE / "data" / "schedule_integration"
DATA = Path(os.environ.get("CELLVI_DATA_DIR", HERE.parent.parent / "shared" / "data"))
KEYS = {
    "pbmc_3chemistries": ("batch", "cell_type"),
    "cellbench_3celllines_2protocols": ("batch", "cell_type"),
    "simulated_20000_4b": ("batch", "cell_type"),  # bench/integration.py's simulated set, made on first use
}
SUMMARY = ["Total", "Bio conservation", "Batch correction"]
METRICS = [
    "Isolated labels",
    "KMeans NMI",
    "KMeans ARI",
    "Silhouette label",
    "cLISI",
    "BRAS",
    "iLISI",
    "KBET",
    "Graph connectivity",
    "PCR comparison",
    *SUMMARY,
]


def load_labelled(dataset: str):
    """(adata, batch key, label key) of a shared labelled set, both keys categorical, with the
    unintegrated embedding (bench/integration.py's log-normalised 50-PC PCA) in ``obsm["PCA"]``."""
    import anndata as ad

    from integration import unintegrated_pca

    batch_key, label_key = KEYS[dataset]
    if dataset.startswith("simulated_"):
        from integration import simulated

        n_cells, n_batches = (int(v.rstrip("b")) for v in dataset.split("_")[1:])
        path = simulated(n_cells, n_batches, HERE / "data" / "integration_work" / f"{dataset}.h5ad")
    else:
        path = DATA / f"{dataset}.h5ad"
    adata = ad.read_h5ad(path)
    for k in (batch_key, label_key):
        adata.obs[k] = adata.obs[k].astype(str).astype("category")
    adata.obsm["PCA"] = unintegrated_pca(adata)
    return adata, batch_key, label_key


def score(adata, keys: list, batch_key: str, label_key: str) -> pd.DataFrame:
    """Unscaled scIB scores of the embeddings ``obsm[k]`` for ``k`` in ``keys`` (one row each), as
    bench/integration.py scores them: exact kNN, ``obsm["PCA"]`` as the unintegrated embedding."""
    from cellvi.analysis import benchmark_integration

    _, bm = benchmark_integration(
        adata,
        ["PCA", *keys],
        batch_key,
        label_key,
        pre_integrated_obsm_key="PCA",
        neighbors="exact",
        return_benchmarker=True,
    )
    return bm.get_results(min_max_scale=False).drop(index="Metric Type").astype(np.float64).drop(index="PCA")


def run(
    dataset: str, schedule: str, max_epochs: int | None, seeds: list, precision: str = "32-true", plan: str = ""
) -> Path:
    import torch

    import cellvi

    torch.set_num_threads(1)
    adata, batch_key, label_key = load_labelled(dataset)
    tag = schedule + (f"_e{max_epochs}" if max_epochs else "") + ("" if precision == "32-true" else f"_{precision}")
    plan_kwargs = json.loads(plan) if plan else {}
    tag += "".join(f"_{k}{v}" for k, v in sorted(plan_kwargs.items()))
    keys, seconds, epochs = [], {}, {}
    for seed in seeds:
        cellvi.settings.seed = seed
        start = time.perf_counter()
        cellvi.model.SCVI.setup_anndata(adata, batch_key=batch_key)
        model = cellvi.model.SCVI(adata)
        extra = {} if precision == "32-true" else {"precision": precision}
        model.train(
            enable_progress_bar=False, schedule=schedule, max_epochs=max_epochs, plan_kwargs=plan_kwargs, **extra
        )
        key = f"{tag}_{seed}"
        adata.obsm[key] = model.get_latent_representation()
        seconds[key], epochs[key] = time.perf_counter() - start, len(model.history)
        keys.append(key)
        print(key, f"{seconds[key]:.0f} s", epochs[key], "epochs", flush=True)
    df = score(adata, keys, batch_key, label_key)
    df["dataset"], df["schedule"], df["max_epochs"], df["precision"] = dataset, schedule, max_epochs or 0, precision
    df["plan"] = json.dumps(plan_kwargs, sort_keys=True) if plan_kwargs else ""
    df["seed"] = [int(k.rsplit("_", 1)[1]) for k in df.index]
    df["epochs"] = [epochs[k] for k in df.index]
    df["seconds"] = [seconds[k] for k in df.index]
    RUNS.mkdir(parents=True, exist_ok=True)
    out = RUNS / f"{dataset}_{tag}_{'-'.join(map(str, seeds))}.csv"
    df.to_csv(out)
    return out


def _group(dataset: str, setting: str, g: pd.DataFrame, epochs: int) -> dict:
    return {
        "dataset": dataset,
        "setting": setting,
        "epochs": epochs,
        "seeds": len(g),
        **{f"{k} mean": float(g[k].mean()) for k in SUMMARY},
        **{f"{k} sd": float(g[k].std(ddof=1)) if len(g) > 1 else float("nan") for k in SUMMARY},
        "totals": g["Total"].tolist(),
    }


def summarise() -> None:
    """bench/results/schedule_integration.{json,md} from every run's CSV, against the default schedule's
    per-seed scores in bench/results/integration_<dataset>.json (Welch's t-test on the totals)."""
    from scipy.stats import ttest_ind

    results = HERE / "results" / "schedule_integration.json"
    earlier = [pd.DataFrame(json.loads(results.read_text())["per_seed"])] if results.exists() else []
    new = [pd.read_csv(p, index_col=0) for p in sorted(RUNS.glob("*.csv"))]
    rows = pd.concat(earlier + new, ignore_index=True)  # a seed run again replaces its earlier scores
    if "precision" not in rows:
        rows["precision"] = "32-true"
    rows["precision"] = rows["precision"].fillna("32-true")  # runs from before the option: float32
    rows["plan"] = rows["plan"].fillna("") if "plan" in rows else ""  # runs from before --plan: none
    rows = rows.drop_duplicates(["dataset", "schedule", "max_epochs", "precision", "plan", "seed"], keep="last")
    groups, refs = [], {}
    for dataset in rows["dataset"].unique():  # the default schedule, scored the same way
        ref = HERE / "results" / f"integration_{dataset}.json"
        ref_json = json.loads(ref.read_text()) if ref.exists() else {}
        if ref_json.get("neighbors", "exact") == "exact":  # only scores taken as this script takes them
            per_seed = pd.DataFrame(ref_json["per_seed"])
            for method in ("cellvi SCVI", "scvi-tools SCVI"):
                g = per_seed[per_seed["method"] == method]
                if len(g):
                    refs[(dataset, method)] = g["Total"].to_numpy()
                    groups.append(_group(dataset, f"{method}, default schedule", g, 400))
        else:  # scored otherwise there (approximate kNN): this script's own default-schedule runs instead
            own = rows[(rows["dataset"] == dataset) & (rows["schedule"] == "scvi-tools") & (rows["max_epochs"] == 0)]
            own = own[(own["precision"] == "32-true") & (own["plan"] == "")]
            if len(own) > 1:
                refs[(dataset, "cellvi SCVI")] = own["Total"].to_numpy()
    for (dataset, schedule, max_epochs, precision, plan), g in rows.groupby(
        ["dataset", "schedule", "max_epochs", "precision", "plan"]
    ):
        setting = f"cellvi schedule='{schedule}'" + (f", max_epochs={max_epochs}" if max_epochs else "")
        setting += "" if precision == "32-true" else f", precision='{precision}'"
        setting += f", plan_kwargs={plan}" if plan else ""
        row = _group(dataset, setting, g, int(g["epochs"].median()))
        for (d, method), totals in refs.items():
            if d == dataset and len(g) > 1 and not np.array_equal(g["Total"].to_numpy(), totals):
                row[f"minus {method}"] = {
                    "diff": float(g["Total"].mean() - totals.mean()),
                    "welch_p": float(ttest_ind(g["Total"], totals, equal_var=False).pvalue),
                }
        groups.append(row)
    per_seed = rows[["dataset", "schedule", "max_epochs", "precision", "plan", "seed", "epochs", "seconds", *METRICS]]
    results.write_text(json.dumps({"rows": groups, "per_seed": per_seed.to_dict("records")}, indent=1))
    lines = [
        "# scIB of cellvi SCVI under each training schedule and precision",
        "",
        "scib-metrics Benchmarker (exact kNN, unscaled; Total = 0.6 bio + 0.4 batch), mean ± sd over seeds, one "
        "torch thread per run. Command: `.venv/bin/python bench/schedule_integration.py run --dataset D --schedule S "
        "[--max-epochs E] [--precision P] --seeds ...` per setting, then `summarise`. The default-schedule rows are the per-seed "
        "scores of bench/results/integration_<dataset>.json (the same scoring); where that file's kNN was "
        "approximate (the simulated set), this script's own `--schedule scvi-tools` runs are the cellvi default. "
        "Total minus the default schedule's, Welch's p in brackets.",
        "",
        "| dataset | setting | epochs | seeds | Total | Bio conservation | Batch correction "
        "| minus cellvi default | minus scvi-tools default |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for g in groups:
        cells = " | ".join(f"{g[f'{k} mean']:.3f} ± {g[f'{k} sd']:.3f}" for k in SUMMARY)
        diffs = " | ".join(
            f"{g[k]['diff']:+.3f} (p {g[k]['welch_p']:.2g})" if k in g else ""
            for k in ("minus cellvi SCVI", "minus scvi-tools SCVI")
        )
        lines.append(f"| {g['dataset']} | {g['setting']} | {g['epochs']} | {g['seeds']} | {cells} | {diffs} |")
    (HERE / "results" / "schedule_integration.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--dataset", default="pbmc_3chemistries", choices=list(KEYS))
    r.add_argument("--schedule", default="fast")
    r.add_argument("--max-epochs", type=int, default=None)
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    r.add_argument("--plan", default="", help="plan_kwargs of train() as JSON, e.g. '{\"n_epochs_kl_warmup\": 20}'")
    sub.add_parser("summarise")
    a = ap.parse_args()
    if a.cmd == "run":
        print(run(a.dataset, a.schedule, a.max_epochs, a.seeds, a.precision, a.plan))
    summarise()


if __name__ == "__main__":
    main()
