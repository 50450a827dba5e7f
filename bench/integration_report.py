"""The result files of the integration benchmark (bench/integration.py): per dataset,
bench/results/integration_<name>.{csv,json,md,png} with the scores, the cellvi minus scvi-tools
comparison and whether the issue's goals are met; or, with --cost-only, time and memory alone."""

from __future__ import annotations

import json
import platform
import shlex
import sys
from pathlib import Path

import numpy as np
import pandas as pd

# what the benchmark runs (integration.py) and reports
SHARED = {  # labelled multi-batch shared sets: (file, batch key, label key)
    "pbmc_3chemistries": ("pbmc_3chemistries.h5ad", "batch", "cell_type"),
    "cellbench_3celllines_2protocols": ("cellbench_3celllines_2protocols.h5ad", "batch", "cell_type"),
}
LIBS = {
    "cellvi": ("cellvi", ("SCVI", "SCANVI")),
    "scvi": ("scvi-tools", ("SCVI", "SCANVI")),
    "baselines": ("", ("Harmony", "Scanorama")),
}
BIO = ["Isolated labels", "KMeans NMI", "KMeans ARI", "Silhouette label", "cLISI"]
SUMMARY = ["Total", "Bio conservation", "Batch correction"]


def write_outputs(name: str, meta: dict, scores: pd.DataFrame, bm, out_dir: Path) -> None:
    metrics = [c for c in scores.columns if c not in ("method", "seed")]
    scores.to_csv(out_dir / f"integration_{name}.csv", index=False)
    g = scores.groupby("method", sort=False)[metrics]
    mean, sd, n = g.mean(), g.std(ddof=1), g.size()
    summary = {
        m: {
            "seeds": int(n[m]),
            **{k: {"mean": float(mean.loc[m, k]), "sd": float(sd.loc[m, k]) if n[m] > 1 else None} for k in metrics},
        }
        for m in mean.index
    }
    comparison = compare(scores, SUMMARY + BIO + [c for c in metrics if c not in BIO + SUMMARY])
    with open(out_dir / f"integration_{name}.json", "w") as f:
        json.dump(
            {
                **meta,
                "summary": summary,
                "cellvi_minus_scvi_tools": comparison,
                "per_seed": scores.to_dict(orient="records"),
            },
            f,
            indent=1,
        )

    def fmt(m, k):
        return f"{mean.loc[m, k]:.3f} ± {sd.loc[m, k]:.3f}" if n[m] > 1 else f"{mean.loc[m, k]:.3f}"

    order = mean["Total"].sort_values(ascending=False).index
    seeds = scores.groupby("method", sort=False)["seed"].apply(lambda x: seed_ranges(sorted(x)))
    lines = [
        f"# Integration benchmark: {name}",
        "",
        f"{meta['n_cells']:,} cells x {meta['n_genes']:,} genes, {meta['n_batches']} batches "
        f"(`{meta['batch_key']}`), {meta['n_labels']} labels (`{meta['label_key']}`). scib-metrics "
        f"{meta['scib_metrics']} Benchmarker defaults, unscaled; Total = 0.6 bio + 0.4 batch. "
        f"kNN: {meta['neighbors']}. Mean ± sd over seeds (sample sd); PCA is deterministic. "
        f"Command: `{meta['command']}`",
        "",
        "| method | seeds | Total | Bio conservation | Batch correction | " + " | ".join(BIO) + " |",
        "|---|---|---|---|---|" + "---|" * len(BIO),
    ]
    for m in order:
        lines.append(f"| {m} | {n[m]} | " + " | ".join(fmt(m, k) for k in SUMMARY + BIO) + " |")
    random = [m for m in order if m != "PCA"]
    lines += ["", "Seeds: " + "; ".join(f"{m} {seeds[m]}" for m in random) + ".", "", *rerun_lines(meta, seeds)]
    lines += goal_lines(comparison, sd, n)
    batch_cols = [c for c in metrics if c not in BIO + SUMMARY]
    if comparison:
        lines += [
            "",
            "cellvi minus scvi-tools: difference of the means ± its standard error (sqrt(sd1²/n1 + sd2²/n2)), "
            "Welch's t-test p-value in brackets:",
            "",
            "| model | seeds (cellvi, scvi-tools) | " + " | ".join(SUMMARY + BIO) + " |",
            "|---|---|" + "---|" * len(SUMMARY + BIO),
        ]
        for model, c in comparison.items():
            cells = [f"{c[k]['diff']:+.3f} ± {c[k]['se']:.3f} (p {c[k]['welch_p']:.2f})" for k in SUMMARY + BIO]
            lines.append(f"| {model} | {c['seeds'][0]}, {c['seeds'][1]} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Batch-correction metrics:",
        "",
        "| method | " + " | ".join(batch_cols) + " |",
        "|---|" + "---|" * len(batch_cols),
    ]
    for m in order:
        lines.append(f"| {m} | " + " | ".join(fmt(m, k) for k in batch_cols) + " |")
    lines += [
        "",
        "Seconds per seed (training + latent, median over the embeddings computed in --work-dir, not the rows "
        "kept from --previous-scores; machine shared, noisy): "
        + ", ".join(f"{k} {v:.0f}" for k, v in meta["median_seconds"].items()),
        "",
    ]
    if meta.get("worker_peak_rss_mib"):
        lines += [
            "Peak RSS per worker process (MiB, median, data loading included): "
            + ", ".join(f"{k} {v:.0f}" for k, v in meta["worker_peak_rss_mib"].items()),
            "",
        ]
    lines += []
    (out_dir / f"integration_{name}.md").write_text("\n".join(lines))
    if bm is not None:  # the scib-metrics table of the seed means, drawn by Benchmarker itself
        import matplotlib

        matplotlib.use("Agg")
        # from the per-seed rows, so that seeds kept from --previous-scores count as well
        from scib_metrics.benchmark._core import metric_name_cleaner  # scib-metrics' names -> the CSV's

        types = bm._results["Metric Type"]
        means = scores.groupby("method", sort=False)[[metric_name_cleaner[k] for k in types.index]].mean().T
        means.index = types.index
        means["Metric Type"] = types
        bm._results, bm._embedding_obsm_keys = means, list(means.columns[:-1])
        tab = bm.plot_results_table(min_max_scale=False, show=False)
        tab.ax.figure.savefig(out_dir / f"integration_{name}.png", dpi=120, bbox_inches="tight")


def seed_ranges(seeds: list) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    runs, start = [], seeds[0]
    for a, b in zip(seeds, seeds[1:] + [None]):
        if b != a + 1:
            runs.append(f"{start}-{a}" if a > start else f"{a}")
            start = b
    return ", ".join(runs)


def rerun_lines(meta: dict, seeds: pd.Series) -> list:
    """How to recompute every seed in the table from nothing (the run that wrote it may have been a
    --score-only pass over cached embeddings and an earlier run's CSV)."""
    if meta["dataset"] in SHARED:
        ds = f"--datasets {meta['dataset']}"
    elif meta["dataset"].startswith("simulated_"):
        ds = f"--datasets --simulated {meta['n_cells']} --sim-batches {meta['n_batches']}"
    else:
        ds = "--h5ad PATH --batch-key KEY --label-key KEY"
    by_lib = {}
    for lib, (prefix, methods) in LIBS.items():
        got = [seeds[f"{prefix} {m}".strip()] for m in methods if f"{prefix} {m}".strip() in seeds.index]
        got = got[:1]  # a worker run computes all of its library's methods for one seed
        if got:
            by_lib.setdefault(got[0], []).append(lib)
    cmds = []
    for rng, libs in by_lib.items():
        for part in rng.split(", "):  # one command per contiguous range of seeds
            first, last = int(part.split("-")[0]), int(part.split("-")[-1])
            cmds.append(
                f"`python bench/integration.py {ds} --neighbors {meta['neighbors']} --libs {' '.join(libs)} "
                f"--first-seed {first} --seeds {last - first + 1} --embed-only`"
            )
    cmds.append(
        f"`python bench/integration.py {ds} --neighbors {meta['neighbors']} --score-only` (scores every cached seed)"
    )
    return [
        "Rerun from nothing (the embeddings go to one cache in --work-dir): "
        + "; then ".join(cmds)
        + f". This table was written by `{meta['command']}`.",
        "",
    ]


def goal_lines(comparison: dict, sd: pd.DataFrame, n: pd.Series) -> list:
    """The issue's goal, plainly: cellvi's mean Total >= scvi-tools', and its seed sd no wider."""
    out = []
    for model, c in comparison.items():
        a, b = f"cellvi {model}", f"scvi-tools {model}"
        t = c["Total"]
        mean_ok = t["diff"] >= 0
        sd_ok = sd.loc[a, "Total"] <= sd.loc[b, "Total"]
        out.append(
            f"- Goal, {model}: cellvi mean Total >= scvi-tools': **{'met' if mean_ok else 'NOT met'}** "
            f"(cellvi minus scvi-tools {t['diff']:+.4f} ± {t['se']:.4f}, Welch p {t['welch_p']:.2f}, "
            f"{n[a]} and {n[b]} seeds; bio {c['Bio conservation']['diff']:+.4f}, p "
            f"{c['Bio conservation']['welch_p']:.2f}); seed sd no wider than scvi-tools': "
            f"**{'met' if sd_ok else 'NOT met'}** ({sd.loc[a, 'Total']:.4f} vs {sd.loc[b, 'Total']:.4f})."
        )
    return out + [""] if out else []


def compare(scores: pd.DataFrame, metrics: list) -> dict:
    """cellvi against scvi-tools, per model and metric: difference of the means, its standard error
    sqrt(sd1^2/n1 + sd2^2/n2) and Welch's t-test p-value (scipy.stats.ttest_ind, equal_var=False)."""
    from scipy.stats import ttest_ind

    out = {}
    for model in ("SCVI", "SCANVI"):
        a_, b_ = scores[scores.method == f"cellvi {model}"], scores[scores.method == f"scvi-tools {model}"]
        if len(a_) < 2 or len(b_) < 2:
            continue
        out[model] = {"seeds": [len(a_), len(b_)]}
        for k in metrics:
            x, y = a_[k].to_numpy(float), b_[k].to_numpy(float)
            se = float(np.sqrt(x.var(ddof=1) / len(x) + y.var(ddof=1) / len(y)))
            out[model][k] = {
                "diff": float(x.mean() - y.mean()),
                "se": se,
                "welch_p": float(ttest_ind(x, y, equal_var=False).pvalue),
            }
    return out


def cost_ratios(cost: dict) -> dict:
    """scvi-tools over cellvi (above 1: cellvi is faster or smaller), for what both libraries measured."""
    sec, rss, cpu = cost["median_seconds"], cost["worker_peak_rss_mib"], cost["worker_cpu_seconds"]
    out = {}
    for method in ("SCVI", "SCANVI"):
        if f"cellvi {method}" in sec and f"scvi-tools {method}" in sec:
            out[f"{method} wall-time speed-up"] = sec[f"scvi-tools {method}"] / sec[f"cellvi {method}"]
    if "cellvi" in cpu and "scvi-tools" in cpu:
        out["worker CPU-time speed-up (SCVI and SCANVI)"] = cpu["scvi-tools"] / cpu["cellvi"]
        out["peak RSS, scvi-tools / cellvi"] = rss["scvi-tools"] / rss["cellvi"]
    return out


def write_cost(name: str, path: Path, batch_key: str, label_key: str, cost: dict, a) -> None:
    """bench/results/integration_<name>.{json,md} with the time and memory of each method, no scores."""
    import anndata as ad

    obs = ad.read_h5ad(path, backed="r")
    meta = dict(
        dataset=name,
        n_cells=int(obs.n_obs),
        n_genes=int(obs.n_vars),
        n_batches=int(obs.obs[batch_key].nunique()),
        n_labels=int(obs.obs[label_key].nunique()),
        command="python " + shlex.join(sys.argv),
        python=platform.python_version(),
        **cost,
        ratios=cost_ratios(cost),
        **({"note": a.note} if a.note else {}),
    )
    out = Path(a.out_dir)
    (out / f"integration_{name}.json").write_text(json.dumps(meta, indent=1))
    lines = [
        f"# Integration benchmark: {name} (time and memory only)",
        "",
        f"{meta['n_cells']:,} cells x {meta['n_genes']:,} genes, {meta['n_batches']} batches, "
        f"{meta['n_labels']} labels. Each library at its defaults, one worker process with one thread "
        f"(bench/integration_worker.py), {a.seeds} seed(s); not scored (--cost-only). Command: `{meta['command']}`",
        "",
        "| method | median wall s (training + latent) |",
        "|---|---|",
        *[f"| {k} | {v:.0f} |" for k, v in cost["median_seconds"].items()],
        "",
        "| worker | median peak RSS MiB (data loading included) | median CPU s |",
        "|---|---|---|",
        *[f"| {k} | {v:.0f} | {cost['worker_cpu_seconds'][k]:.0f} |" for k, v in cost["worker_peak_rss_mib"].items()],
        "",
        *[f"- {k}: {v:.2f}" for k, v in meta["ratios"].items()],
        "",
        *([a.note, ""] if a.note else []),
    ]
    (out / f"integration_{name}.md").write_text("\n".join(lines))
    print("\n".join(lines), flush=True)
