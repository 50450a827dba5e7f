"""cellvi.grn on its own GRN simulator (cellvi.data.simulate_grn): known network, known drivers.

For each seed: simulate counts (branching trajectory, 2 batches, NB), train scVI (batch-aware; the 2-D
embedding is a PCA of its latent), then with expression = log-normalised counts and = scVI denoised
expression (``get_normalized_expression``, each cell decoded in its own batch, log1p per 10^4):

The log-normalised counts use median-of-ratios size factors and, like the denoised expression, have the
batch offsets removed within each cluster before fitting (``batch_key="batch"``); the first variant is
the GRN as it was before (total-count size factors, no batch), kept to show what that changed.

* edge recovery per branch cluster: AUPRC ratio / early precision ratio (BEELINE's measures, candidate
  regulators = the TFs), and the precision of the filtered network (p < 0.001, top 2000);
* knockouts: TF1 (drives branch1), TF2 (branch2), the TF with no targets (``uns["no_target_tf"]``): mean
  perturbation score and mean shift length per branch;
* the scVI-decoded shift of the same knockouts: per-cell cosine with the GRN shift (median, fraction > 0)
  and sign agreement of the perturbation scores.

    PYTHONPATH=src python bench/grn_simulated.py [--seeds 6] [--cells 2000] [--genes 200]

Writes bench/results/grn_simulated.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
import cellvi  # noqa: E402 (after the path above)
from cellvi import grn  # noqa: E402

# (label, use the scVI model, Oracle arguments); the first row is the GRN before this stop's fix
VARIANTS = (
    ("log-normalised (total counts, no batch)", False, {"normalisation": "total"}),
    ("log-normalised", False, {"batch_key": "batch"}),
    ("scVI denoised", True, {"batch_key": "batch"}),
)
LABELS = [v[0] for v in VARIANTS]


def run(seed, n_cells, n_genes, epochs):
    from sklearn.decomposition import PCA

    ad = cellvi.data.simulate_grn(n_cells=n_cells, n_genes=n_genes, n_tfs=20, n_batches=2, seed=seed)
    truth = ad.uns.pop("true_network")
    orphan = ad.uns["no_target_tf"]
    cellvi.settings.seed = seed
    cellvi.model.SCVI.setup_anndata(ad, batch_key="batch")
    model = cellvi.model.SCVI(ad, n_latent=10)
    t0 = time.perf_counter()
    model.train(max_epochs=epochs)
    train_s = time.perf_counter() - t0
    z = model.get_latent_representation(ad)
    ad.obsm["X_pca2"] = PCA(2, random_state=0).fit_transform(z)  # 2-D view of the scVI latent
    tfs = list(ad.var_names[ad.var["is_tf"]])
    true_set = set(zip(truth["regulator"], truth["target"]))
    out = {"seed": seed, "scvi_train_s": train_s}
    for label, m, kw in VARIANTS:
        model_or_none = model if m else None
        o = grn.Oracle(ad, "branch", "X_pca2", model=model_or_none, tfs=tfs, pseudotime_key="pseudotime", **kw)
        o.fit_grn(p=0.001, top_k=2000)
        rec = {}
        for cl in ("branch1", "branch2"):
            S = grn.edge_scores(o.links_all[cl], o.genes)
            kept = o.links[o.links["cluster"] == cl]
            rec[cl] = {
                "AUPRC ratio": grn.auprc_ratio(S, truth, o.genes),
                "EPR": grn.early_precision_ratio(S, truth, o.genes),
                "kept_edges": len(kept),
                "kept_precision": float(np.mean([e in true_set for e in zip(kept["source"], kept["target"])])),
            }
        ko = {}
        for gene in ("TF1", "TF2", orphan):
            res = o.simulate_shift({gene: 0.0})
            by = res.score_by_cluster()
            entry = {
                cl: {"mean_score": float(by.loc[cl, "mean_score"]), "mean_shift": float(by.loc[cl, "mean_shift"])}
                for cl in ("root", "branch1", "branch2")
            }
            if model_or_none is not None:
                s = o.scvi_shift(res)
                entry["scvi"] = {
                    "median_cosine": s["agreement"]["median_cosine"],
                    "fraction_agree": s["agreement"]["fraction_agree"],
                    "score_sign_agreement": s["score_sign_agreement"],
                    "scvi_mean_score": {
                        cl: float(np.mean(s["score"][(ad.obs["branch"] == cl).to_numpy()]))
                        for cl in ("root", "branch1", "branch2")
                    },
                }
            ko["no-target TF" if gene == orphan else gene] = entry
        out[label] = {"recovery": rec, "knockouts": ko, "fit_grn_s": o.timings["fit_grn_s"]}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--cells", type=int, default=2000)
    ap.add_argument("--genes", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=100)
    args = ap.parse_args()
    runs = [run(s, args.cells, args.genes, args.epochs) for s in range(args.seeds)]
    result = {"runs": runs, "cells": args.cells, "genes": args.genes, "load_avg": os.getloadavg()}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "grn_simulated.json").write_text(json.dumps(result, indent=1))
    med = lambda xs: float(np.median(xs))
    lines = [
        (
            f"# cellvi.grn on simulate_grn ({args.cells} cells x {args.genes} genes, 20 TFs, 2 batches; "
            f"medians over {args.seeds} seeds)"
        ),
        "",
        "## Edge recovery (candidate regulators: the 20 TFs)",
        "",
        "| expression | cluster | AUPRC ratio | EPR | kept edges | precision of kept |",
        "|---|---|---|---|---|---|",
    ]
    for label in LABELS:
        for cl in ("branch1", "branch2"):
            r = [x[label]["recovery"][cl] for x in runs]
            lines.append(
                f"| {label} | {cl} | {med([a['AUPRC ratio'] for a in r]):.2f} | {med([a['EPR'] for a in r]):.2f} "
                f"| {med([a['kept_edges'] for a in r]):.0f} | {med([a['kept_precision'] for a in r]):.2f} |"
            )
    lines += [
        "",
        "## Knockouts: mean perturbation score (mean shift length) per branch",
        "",
        "| expression | knockout | root | branch1 | branch2 |",
        "|---|---|---|---|---|",
    ]
    for label in LABELS:
        for g in ("TF1", "TF2", "no-target TF"):
            cells = []
            for cl in ("root", "branch1", "branch2"):
                sc = med([x[label]["knockouts"][g][cl]["mean_score"] for x in runs])
                sh = med([x[label]["knockouts"][g][cl]["mean_shift"] for x in runs])
                cells.append(f"{sc:+.4f} ({sh:.3f})")
            lines.append(f"| {label} | {g} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Worst seed: the largest mean shift length of the no-target TF's knockout over seeds and branches, "
        "against the smallest of the drivers' on their own branch (TF1 on branch1, TF2 on branch2):",
        "",
        "| expression | no-target TF, worst | drivers, weakest |",
        "|---|---|---|",
    ]
    for label in LABELS:
        worst = max(
            x[label]["knockouts"]["no-target TF"][cl]["mean_shift"]
            for x in runs
            for cl in ("root", "branch1", "branch2")
        )
        weakest = min(
            min(
                x[label]["knockouts"]["TF1"]["branch1"]["mean_shift"],
                x[label]["knockouts"]["TF2"]["branch2"]["mean_shift"],
            )
            for x in runs
        )
        lines.append(f"| {label} | {worst:.3f} | {weakest:.3f} |")
    lines += [
        "",
        "## scVI-decoded shift vs GRN shift (scVI denoised GRN)",
        "",
        "| knockout | median cosine | fraction of cells agreeing | score sign agreement | scVI score root / branch1 / branch2 |",
        "|---|---|---|---|---|",
    ]
    for g in ("TF1", "TF2", "no-target TF"):
        s = [x["scVI denoised"]["knockouts"][g]["scvi"] for x in runs]
        sc = [med([a["scvi_mean_score"][cl] for a in s]) for cl in ("root", "branch1", "branch2")]
        lines.append(
            f"| {g} | {med([a['median_cosine'] for a in s]):.2f} | {med([a['fraction_agree'] for a in s]):.2f} | "
            f"{med([a['score_sign_agreement'] for a in s]):.2f} | " + " / ".join(f"{v:+.4f}" for v in sc) + " |"
        )
    (HERE / "results" / "grn_simulated.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
