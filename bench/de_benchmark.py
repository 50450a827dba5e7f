"""Differential expression: cellvi vs scvi-tools 1.4.2 vs a Wilcoxon test (scanpy), on known answers.

    python bench/de_benchmark.py                    # all three parts, moderate sizes
    python bench/de_benchmark.py --parts ifnb sim   # a subset; --epochs, --threads, --quick

Parts:
- ``ifnb``: pbmc_ifnb_stimulation (Kang et al. 2018), stim vs ctrl, change mode. Up-regulated genes
  (lfc_mean > 0) sorted by proba_de then lfc_mean (Wilcoxon: by score); the fraction of the top 30
  in the MSigDB Hallmark interferon-alpha response set, and in alpha + gamma
  (bench/genesets/msigdb_hallmark_interferon.txt), and the ranks of ISG15, IFI6, IFIT1, IFIT3, MX1.
- ``sim``: cellvi.data.simulate (3 cell types, 2 batches); type0 vs type1. Positives: genes whose
  simulated log2 fold changes differ (de_lfc_type0 != de_lfc_type1). AUROC and AUPRC of proba_de
  (ties broken by |lfc_mean|) and of |Wilcoxon score|.
- ``speed``: one-vs-all DE, 5 groups, 10,000 cells x 2,000 genes (simulated), change and vanilla.

Each library runs in its own process (bench/de_worker.py; scvi-tools from bench/.venv-scvi).
Results: bench/results/de_benchmark.{json,md}. Timings on a shared machine are noisy: rerun on a
quiet one before quoting them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
RESULTS = HERE / "results"
SHARED = Path(os.environ.get("CELLVI_DATA_DIR", HERE.parent.parent / "shared" / "data"))
PYTHONS = {"cellvi": sys.executable, "scvi": str(HERE / ".venv-scvi" / "bin" / "python")}
NAMED_ISGS = ["ISG15", "IFI6", "IFIT1", "IFIT3", "MX1"]
TOP = 30


def gene_sets(path=HERE / "genesets" / "msigdb_hallmark_interferon.txt") -> dict[str, set]:
    out = {}
    for line in Path(path).read_text().splitlines():
        if line and not line.startswith("#"):
            name, *genes = line.split("\t")
            out[name] = set(genes)
    return out


def run_worker(lib, task, data, out, args, **extra):
    cmd = [
        PYTHONS[lib],
        str(HERE / "de_worker.py"),
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
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "OMP_WAIT_POLICY": "PASSIVE"}
    subprocess.run(cmd, check=True, env=env)
    return json.loads(Path(str(out) + ".json").read_text())


def wilcoxon(adata, groupby, group1, group2) -> pd.DataFrame:
    """scanpy rank_genes_groups (Wilcoxon) on log1p(counts per 10,000): score and log fold change."""
    import scanpy as sc

    b = adata.copy()
    sc.pp.normalize_total(b, target_sum=1e4)
    sc.pp.log1p(b)
    sc.tl.rank_genes_groups(b, groupby, groups=[group1], reference=group2, method="wilcoxon")
    df = sc.get.rank_genes_groups_df(b, group=group1).set_index("names")
    return df.rename(columns={"scores": "score", "logfoldchanges": "lfc"})


def bayes_order(res: pd.DataFrame) -> pd.DataFrame:
    return res.assign(_abs=res["lfc_mean"].abs()).sort_values(["proba_de", "_abs"], ascending=False)


# ---------------------------------------------------------------------------------------- parts
def part_ifnb(args):
    import anndata as ad

    path = SHARED / "pbmc_ifnb_stimulation.h5ad"
    adata = ad.read_h5ad(path)
    sets = gene_sets()
    alpha = sets["HALLMARK_INTERFERON_ALPHA_RESPONSE"]
    both = alpha | sets["HALLMARK_INTERFERON_GAMMA_RESPONSE"]
    rankings = {}
    for lib in ("cellvi", "scvi"):
        info = run_worker(
            lib,
            "de",
            path,
            DATA / f"de_ifnb_{lib}",
            args,
            epochs=args.epochs,
            groupby="condition",
            group1="stim",
            group2="ctrl",
        )
        res = pd.read_csv(DATA / f"de_ifnb_{lib}.csv", index_col=0)
        up = res[res["lfc_mean"] > 0].sort_values(["proba_de", "lfc_mean"], ascending=False)
        rankings[lib] = (list(up.index), {k: info[k] for k in ("train_s", "de_s")})
    w = wilcoxon(adata, "condition", "stim", "ctrl")
    rankings["wilcoxon"] = (list(w[w["lfc"] > 0].sort_values("score", ascending=False).index), {})
    out = {
        "data": path.name,
        "n_cells": adata.n_obs,
        "n_genes": adata.n_vars,
        "epochs": args.epochs,
        "top": TOP,
        "alpha_in_data": len(alpha & set(adata.var_names)),
        "alpha_gamma_in_data": len(both & set(adata.var_names)),
    }
    for name, (order, times) in rankings.items():
        top = order[:TOP]
        out[name] = {
            "frac_top_in_hallmark_ifn_alpha": np.mean([g in alpha for g in top]),
            "frac_top_in_hallmark_ifn_alpha_or_gamma": np.mean([g in both for g in top]),
            "rank_of_named_isgs": {g: (order.index(g) if g in order else None) for g in NAMED_ISGS},
            "top10": top[:10],
            **times,
        }
    return out


def part_sim(args):
    import cellvi

    n_cells, n_genes = (1000, 500) if args.quick else (3000, 1000)
    path = DATA / f"de_sim_{n_cells}x{n_genes}.h5ad"
    adata = cellvi.data.simulate(n_cells=n_cells, n_genes=n_genes, n_batches=2, n_cell_types=3, seed=0)
    adata.write_h5ad(path)
    truth = adata.var["de_lfc_type0"] != adata.var["de_lfc_type1"]
    from sklearn.metrics import average_precision_score, roc_auc_score

    scores = {}
    out = {"n_cells": n_cells, "n_genes": n_genes, "epochs": args.epochs, "n_positive": int(truth.sum())}
    for lib in ("cellvi", "scvi"):
        info = run_worker(
            lib,
            "de",
            path,
            DATA / f"de_sim_{lib}",
            args,
            epochs=args.epochs,
            batch_key="batch",
            groupby="cell_type",
            group1="type0",
            group2="type1",
        )
        res = bayes_order(pd.read_csv(DATA / f"de_sim_{lib}.csv", index_col=0))
        scores[lib] = pd.Series(np.arange(len(res))[::-1], index=res.index, dtype=float)  # rank as score
        out[lib] = {k: info[k] for k in ("train_s", "de_s")}
    w = wilcoxon(adata, "cell_type", "type0", "type1")
    scores["wilcoxon"] = w["score"].abs()
    for name, s in scores.items():
        s = s.loc[adata.var_names]
        out.setdefault(name, {}).update(auroc=roc_auc_score(truth, s), auprc=average_precision_score(truth, s))
    return out


def part_speed(args):
    import cellvi

    n_cells, n_genes = (2000, 500) if args.quick else (10_000, 2_000)
    path = DATA / f"de_speed_{n_cells}x{n_genes}.h5ad"
    cellvi.data.simulate(n_cells=n_cells, n_genes=n_genes, n_batches=1, n_cell_types=5, seed=1).write_h5ad(path)
    out = {"n_cells": n_cells, "n_genes": n_genes, "n_groups": 5, "train_epochs": 5, "n_samples_per_group": 5000}
    for lib in ("cellvi", "scvi"):
        info = run_worker(lib, "speed", path, DATA / f"de_speed_{lib}", args, epochs=5, groupby="cell_type")
        out[lib] = {k: v for k, v in info.items() if k.endswith("_s")}
    return out


def write_markdown(res: dict, path: Path):
    lines = [
        "# Differential expression benchmark",
        "",
        "cellvi vs scvi-tools 1.4.2 vs Wilcoxon (scanpy). Command: `python bench/de_benchmark.py`. "
        f"Threads: {res['threads']}. Timings were taken on a shared, busy 2-core machine: noisy.",
        "",
    ]
    if "ifnb" in res:
        r = res["ifnb"]
        lines += [
            f"## IFN-beta stimulation ({r['n_cells']} cells x {r['n_genes']} genes, {r['epochs']} epochs)",
            "",
            f"Fraction of the top {r['top']} up-regulated genes (stim vs ctrl) in MSigDB Hallmark sets "
            f"(Liberzon et al. 2015; {r['alpha_in_data']} IFN-alpha and {r['alpha_gamma_in_data']} "
            "IFN-alpha-or-gamma genes are in the data).",
            "",
            "| method | IFN-alpha | IFN-alpha or gamma | ranks of " + ", ".join(NAMED_ISGS) + " | train s | DE s |",
            "|---|---|---|---|---|---|",
        ]
        for m in ("cellvi", "scvi", "wilcoxon"):
            x = r[m]
            ranks = ", ".join(str(v) for v in x["rank_of_named_isgs"].values())
            lines.append(
                f"| {m} | {x['frac_top_in_hallmark_ifn_alpha']:.2f} | "
                f"{x['frac_top_in_hallmark_ifn_alpha_or_gamma']:.2f} | {ranks} | "
                f"{x.get('train_s', float('nan')):.1f} | {x.get('de_s', float('nan')):.1f} |"
            )
        lines.append("")
    if "sim" in res:
        r = res["sim"]
        lines += [
            f"## Simulated ({r['n_cells']} cells x {r['n_genes']} genes, type0 vs type1, "
            f"{r['n_positive']} true DE genes, {r['epochs']} epochs)",
            "",
            "| method | AUROC | AUPRC |",
            "|---|---|---|",
        ]
        lines += [f"| {m} | {r[m]['auroc']:.3f} | {r[m]['auprc']:.3f} |" for m in ("cellvi", "scvi", "wilcoxon")]
        lines.append("")
    if "speed" in res:
        r = res["speed"]
        lines += [
            f"## Speed: one-vs-all, {r['n_groups']} groups, {r['n_cells']} cells x {r['n_genes']} genes "
            f"({r['n_samples_per_group']} posterior samples per group)",
            "",
            "| library | change mode s | vanilla mode s |",
            "|---|---|---|",
        ]
        lines += [
            f"| {m} | {r[m]['one_vs_all_change_s']:.1f} | {r[m]['one_vs_all_vanilla_s']:.1f} |"
            for m in ("cellvi", "scvi")
        ]
        lines.append("")
    path.write_text("\n".join(lines))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", nargs="+", choices=["ifnb", "sim", "speed"], default=["ifnb", "sim", "speed"])
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="smaller simulated data")
    p.add_argument("--out", default=str(RESULTS / "de_benchmark"))
    args = p.parse_args(argv)
    DATA.mkdir(exist_ok=True)
    RESULTS.mkdir(exist_ok=True)
    res = {"threads": args.threads, "note": "timings on a shared machine; rerun on a quiet one"}
    for part in args.parts:
        res[part] = {"ifnb": part_ifnb, "sim": part_sim, "speed": part_speed}[part](args)
        print(part, json.dumps(res[part], default=float)[:2000])
    Path(args.out + ".json").write_text(json.dumps(res, indent=1, default=float))
    write_markdown(res, Path(args.out + ".md"))


if __name__ == "__main__":
    main()
