"""Importance-weighted vs uniform posterior sampling in cellvi's differential expression, on IFN-beta
stimulation (pbmc_ifnb_stimulation, Kang et al. 2018), stim vs ctrl, change mode.

    python bench/de_importance.py                 # --seeds 0 1 --epochs 30 --max-cells 256 --n-mc 100
    bench/.venv-scvi/bin/python bench/de_importance.py --lib scvi --seeds 0   # scvi-tools 1.4.2, same settings

Genes seen in fewer than 100 cells are dropped (as the known-biology test), to keep the importance
weights (samples x anchors x genes likelihoods) affordable on a 2-core machine. Per seed: one SCVI
trained, then DE with ``weights="uniform"`` and with ``weights="importance"``
(``importance_weighting_kwargs={"max_cells": ..., "n_mc_samples": ...}``). Up-regulated genes
(lfc_mean > 0) sorted by proba_de then lfc_mean; reported: the fraction of the top 30 in the MSigDB
Hallmark interferon-alpha set and in alpha + gamma (bench/genesets/msigdb_hallmark_interferon.txt),
the ranks of ISG15, IFI6, IFIT1, IFIT3, MX1, the overlap of the two top-30 lists, and DE seconds.
Results: bench/results/de_importance.{json,md} (run cellvi last: its markdown includes
de_importance_scvi.json when present). Timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import time
from pathlib import Path

import numpy as np

from worker import peak_rss_mib  # bench/ is on the path when run as a script

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("CELLVI_DATA_DIR", HERE.parent.parent / "shared" / "data"))
NAMED_ISGS = ["ISG15", "IFI6", "IFIT1", "IFIT3", "MX1"]
TOP = 30


def main(argv=None):
    import anndata as ad
    import scanpy as sc
    import torch

    from de_benchmark import gene_sets

    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--max-cells", type=int, default=256)
    p.add_argument("--n-mc", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--lib", choices=["cellvi", "scvi"], default="cellvi")  # scvi: run with bench/.venv-scvi
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    lib = importlib.import_module(args.lib)  # the same API
    if args.lib == "cellvi":
        lib.settings.progress_bar = False
    sets = gene_sets()
    alpha = sets["HALLMARK_INTERFERON_ALPHA_RESPONSE"]
    both = alpha | sets["HALLMARK_INTERFERON_GAMMA_RESPONSE"]
    adata = ad.read_h5ad(SHARED / "pbmc_ifnb_stimulation.h5ad")
    sc.pp.filter_genes(adata, min_cells=100)
    runs = []
    for seed in args.seeds:
        lib.settings.seed = seed
        a = adata.copy()
        lib.model.SCVI.setup_anndata(a)
        model = lib.model.SCVI(a)
        t = time.perf_counter()
        model.train(max_epochs=args.epochs, batch_size=256, train_size=1.0)
        run = {"seed": seed, "train_s": time.perf_counter() - t}
        tops = {}
        for weights in ("uniform", "importance"):
            kw = {}
            if weights == "importance":
                kw = {"importance_weighting_kwargs": {"max_cells": args.max_cells, "n_mc_samples": args.n_mc}}
            t = time.perf_counter()
            res = model.differential_expression(
                groupby="condition", group1="stim", group2="ctrl", mode="change", weights=weights, **kw
            )
            secs = time.perf_counter() - t
            up = res[res["lfc_mean"] > 0].sort_values(["proba_de", "lfc_mean"], ascending=False)
            order = list(up.index)
            tops[weights] = order[:TOP]
            run[weights] = {
                "de_s": secs,
                "n_pairs": int(res["n_pairs"].iloc[0]) if "n_pairs" in res else None,
                "frac_top_in_hallmark_ifn_alpha": float(np.mean([g in alpha for g in order[:TOP]])),
                "frac_top_in_hallmark_ifn_alpha_or_gamma": float(np.mean([g in both for g in order[:TOP]])),
                "rank_of_named_isgs": {g: (order.index(g) if g in order else None) for g in NAMED_ISGS},
                "n_de_fdr_0.05": int(res["is_de_fdr_0.05"].sum()),
                "top10": order[:10],
            }
        if args.lib == "cellvi":  # Kish's effective sample size of one round's weights (500 samples)
            from cellvi.model._de import IMPORTANCE_DEFAULTS
            from cellvi.model._de_pools import AtomPools

            masks = [(a.obs["condition"] == c).to_numpy() for c in ("stim", "ctrl")]
            for trunc in (False, True):
                opts = {**IMPORTANCE_DEFAULTS, "max_cells": args.max_cells, "n_mc_samples": args.n_mc}
                pools = AtomPools(masks, np.random.default_rng(seed), importance={**opts, "truncation": trunc})
                pools.draw(model, None, np.array([True, True, False]), 500, [None], None)
                key = "ess_of_500_truncated" if trunc else "ess_of_500"
                run[key] = [float(1 / np.sum(pools.weights[k] ** 2)) for k in (0, 1)]  # stim, ctrl
        run["top30_overlap"] = len(set(tops["uniform"]) & set(tops["importance"])) / TOP
        runs.append(run)
        print(json.dumps(run), flush=True)
    out = {
        "lib": args.lib,
        "data": "pbmc_ifnb_stimulation.h5ad",
        "n_cells": adata.n_obs,
        "n_genes": adata.n_vars,
        "epochs": args.epochs,
        "importance_weighting_kwargs": {"max_cells": args.max_cells, "n_mc_samples": args.n_mc},
        "threads": args.threads,
        "peak_rss_mb": peak_rss_mib(),
        "runs": runs,
    }
    name = "de_importance" if args.lib == "cellvi" else "de_importance_scvi"
    (HERE / "results" / f"{name}.json").write_text(json.dumps(out, indent=1))
    if args.lib == "cellvi":
        (HERE / "results" / "de_importance.md").write_text(markdown(out))


def markdown(out) -> str:
    med = lambda w, k: float(np.median([r[w][k] for r in out["runs"]]))  # noqa: E731
    lines = [
        "# Differential expression: importance vs uniform weights",
        "",
        f"Command: `python bench/de_importance.py --seeds {' '.join(str(r['seed']) for r in out['runs'])} "
        f"--epochs {out['epochs']} --max-cells {out['importance_weighting_kwargs']['max_cells']} "
        f"--n-mc {out['importance_weighting_kwargs']['n_mc_samples']}`. {out['data']}, stim vs ctrl, change mode, "
        f"{out['n_cells']} cells x {out['n_genes']} genes (genes in >= 100 cells), {out['epochs']} epochs, "
        f"{out['threads']} thread(s); peak RSS {out['peak_rss_mb']:.0f} MB. Shared, busy 2-core machine: timings noisy.",
        "",
        "Top 30 up-regulated genes (by proba_de, then lfc_mean) in the MSigDB Hallmark interferon sets; "
        "medians over seeds, then per seed.",
        "",
        "| weights | IFN-alpha | IFN-alpha or gamma | DE s (median) |",
        "|---|---|---|---|",
    ]
    for w in ("uniform", "importance"):
        lines.append(
            f"| {w} | {med(w, 'frac_top_in_hallmark_ifn_alpha'):.2f} | "
            f"{med(w, 'frac_top_in_hallmark_ifn_alpha_or_gamma'):.2f} | {med(w, 'de_s'):.1f} |"
        )
    if "ess_of_500" in out["runs"][0]:
        ess = "; ".join(
            f"seed {r['seed']}: {r['ess_of_500'][0]:.1f} / {r['ess_of_500'][1]:.1f} "
            f"(truncation=True: {r['ess_of_500_truncated'][0]:.1f} / {r['ess_of_500_truncated'][1]:.1f})"
            for r in out["runs"]
        )
        lines += ["", f"Effective sample size (Kish, 1 / sum(w^2)) of one round's 500 weights, stim / ctrl: {ess}."]
    lines += [
        "",
        "| seed | weights | ranks of "
        + ", ".join(NAMED_ISGS)
        + " | genes called DE (FDR 0.05) | pairs | top-30 overlap |",
        "|---|---|---|---|---|---|",
    ]
    for r in out["runs"]:
        for w in ("uniform", "importance"):
            ranks = ", ".join(str(v) for v in r[w]["rank_of_named_isgs"].values())
            lines.append(
                f"| {r['seed']} | {w} | {ranks} | {r[w]['n_de_fdr_0.05']} | {r[w]['n_pairs']} | {r['top30_overlap']:.2f} |"
            )
    peer = HERE / "results" / "de_importance_scvi.json"
    if peer.exists():
        sv = json.loads(peer.read_text())
        lines += [
            "",
            f"## scvi-tools 1.4.2, the same settings (`bench/.venv-scvi/bin/python bench/de_importance.py --lib scvi "
            f"--seeds {' '.join(str(r['seed']) for r in sv['runs'])}`; peak RSS {sv['peak_rss_mb']:.0f} MB)",
            "",
            "| seed | weights | IFN-alpha | IFN-alpha or gamma | ranks of "
            + ", ".join(NAMED_ISGS)
            + " | genes called DE | DE s |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in sv["runs"]:
            for w in ("uniform", "importance"):
                x = r[w]
                ranks = ", ".join(str(v) for v in x["rank_of_named_isgs"].values())
                lines.append(
                    f"| {r['seed']} | {w} | {x['frac_top_in_hallmark_ifn_alpha']:.2f} | "
                    f"{x['frac_top_in_hallmark_ifn_alpha_or_gamma']:.2f} | {ranks} | {x['n_de_fdr_0.05']} | {x['de_s']:.1f} |"
                )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
