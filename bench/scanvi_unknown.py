"""Unseen cell types in SCANVI label transfer: which unknown score separates the query cells of a type the
reference never saw from the others? Leave one cell type out of the reference, every type in turn.

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python bench/scanvi_unknown.py [--seeds 0 1]

Protocol, per dataset (the shared labelled multi-batch sets), held-out batch and left-out type:
reference = the other batches without any cell of the left-out type; query = the held-out batch, all its
cells, labels hidden. SCVI on the reference, SCANVI from it (``train_size=0.9``), ``calibrate()`` (the
temperature and every score's threshold: the 95% quantile on the held-out labelled reference cells, so the
query is never used to fit anything), ``load_query_data`` + training on the query, then each score of
``SCANVI.unknown_score(method=...)`` on the query cells. Reported: AUROC of each score for the left-out
type's query cells against the other query cells, the share of each group above the reference threshold,
and the accuracy of the predicted labels on the known types. A type is left out only where the held-out
batch has at least ``MIN_CELLS`` of it. Results: bench/results/scanvi_unknown.{json,md} (medians over
seeds).
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

import anndata
import numpy as np

from scanvi_calibration import calibrated_query_model  # bench/ is on the path when run as a script
from worker import peak_rss_mib  # bench/ is on the path when run as a script

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CELLVI_DATA_DIR", REPO.parent / "shared" / "data"))
OUT = REPO / "bench" / "results" / "scanvi_unknown"
DATASETS = ["pbmc_3chemistries.h5ad", "cellbench_3celllines_2protocols.h5ad"]
EPOCHS = {"scvi": 60, "scanvi": 10, "query": 30}
MIN_CELLS = 10


def one_split(adata, held: str, left_out: str, seed: int) -> dict:
    from sklearn.metrics import roc_auc_score

    import cellvi
    from cellvi.analysis.unknown import SCORES

    cellvi.settings.seed = seed
    cellvi.settings.progress_bar = False
    types = adata.obs["cell_type"].astype(str)
    ref = adata[(adata.obs["batch"] != held) & (types != left_out)].copy()
    query = adata[adata.obs["batch"] == held].copy()
    truth = query.obs["cell_type"].astype(str).to_numpy()
    cal, qm = calibrated_query_model(ref, query, EPOCHS)
    unseen = truth == left_out
    known = np.isin(truth, qm.classes_)  # types the reference had (all but the left-out one here)
    pred = qm.predict()
    out = {
        "n_unseen": int(unseen.sum()),
        "n_known": int(known.sum()),
        "temperature": cal["temperature"],
        "known_accuracy": float((pred[known] == truth[known]).mean()),
    }
    thresholds = qm.unknown_detector_["thresholds"]
    for m in SCORES:
        s = qm.unknown_score(method=m)
        out[f"auroc_{m}"] = float(roc_auc_score(unseen[unseen | known], s[unseen | known]))
        out[f"flagged_unseen_{m}"] = float((s[unseen] > thresholds[m]).mean())
        out[f"flagged_known_{m}"] = float((s[known] > thresholds[m]).mean())
    return out


def main() -> None:
    from cellvi.analysis.unknown import SCORES

    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--report", action="store_true", help="only rewrite the .md from the .json")
    args = parser.parse_args()
    if args.report:
        return report(json.loads(OUT.with_suffix(".json").read_text()))
    warnings.simplefilter("ignore")
    runs, start = [], time.time()
    out = {"seeds": args.seeds, "epochs": EPOCHS, "min_cells": MIN_CELLS, "quantile": 0.95, "scores": list(SCORES)}
    for seed in args.seeds:  # seed-major, and written after every split: a partial run still reports
        for name in DATASETS:
            adata = anndata.read_h5ad(DATA / name)
            for held in sorted(adata.obs["batch"].astype(str).unique()):
                counts = adata.obs.loc[adata.obs["batch"] == held, "cell_type"].astype(str).value_counts()
                for left_out in sorted(counts.index[counts >= MIN_CELLS]):
                    run = {"dataset": name, "held_out_batch": held, "left_out_type": left_out, "seed": seed}
                    run.update(one_split(adata, held, left_out, seed))
                    runs.append(run)
                    best = max(SCORES, key=lambda m: run[f"auroc_{m}"])
                    print(seed, name, held, left_out, f"best {best} {run[f'auroc_{best}']:.3f}", flush=True)
                    out.update(
                        runs=runs,
                        wall_s=time.time() - start,
                        peak_rss_mib=peak_rss_mib(),
                        load=list(os.getloadavg()),
                    )
                    OUT.with_suffix(".json").write_text(json.dumps(out, indent=1))
                    report(out, quiet=True)
    report(out)


def _rows(out: dict) -> list[dict]:
    """One row per split: the median over the seeds run for it."""
    groups: dict = {}
    for r in out["runs"]:
        groups.setdefault((r["dataset"], r["held_out_batch"], r["left_out_type"]), []).append(r)
    rows = []
    for (name, held, left_out), runs in groups.items():
        row = {"dataset": name, "held_out_batch": held, "left_out_type": left_out, "n_seeds": len(runs)}
        keys = [k for k in runs[0] if k not in row and k != "seed"]
        row.update({k: float(np.median([r[k] for r in runs])) for k in keys})
        rows.append(row)
    return rows


def report(out: dict, quiet: bool = False) -> None:
    rows, scores = _rows(out), out["scores"]
    head = " | ".join(scores)
    lines = [
        "# SCANVI: unknown (unseen) cell types, leave one type out of the reference",
        "",
        (
            f"Seeds {sorted({r['seed'] for r in out['runs']})} (medians); epochs {out['epochs']}; a type is left out where the held-out batch "
            f"has >= {out['min_cells']} cells of it. `PYTHONPATH=src python bench/scanvi_unknown.py`. "
            f"Wall {out['wall_s'] / 60:.0f} min on a shared 2-core machine (load {out['load'][0]:.1f}), "
            f"peak RSS {out['peak_rss_mib']:.0f} MiB."
        ),
        "",
        "## AUROC of each score: the left-out type's query cells against the known types' query cells",
        "",
        f"| dataset | held-out batch | left-out type | cells unseen / known | {head} | known-type accuracy |",
        "|---|---|---|---|" + "---|" * len(scores) + "---|",
    ]
    for r in rows:
        aurocs = " | ".join(f"{r[f'auroc_{m}']:.3f}" for m in scores)
        lines.append(
            f"| {r['dataset'].removesuffix('.h5ad')} | {r['held_out_batch']} | {r['left_out_type']} | "
            f"{r['n_unseen']:.0f} / {r['n_known']:.0f} | {aurocs} | {r['known_accuracy']:.3f} |"
        )
    med = {m: float(np.median([r[f"auroc_{m}"] for r in rows])) for m in scores}
    wins = {m: sum(max(scores, key=lambda s: r[f"auroc_{s}"]) == m for r in rows) for m in scores}
    acc = float(np.median([r["known_accuracy"] for r in rows]))
    for name in sorted({r["dataset"] for r in rows}):
        sub = [r for r in rows if r["dataset"] == name]
        lines.append(
            f"| median, {name.removesuffix('.h5ad')} ({len(sub)} splits) | | | | "
            + " | ".join(f"{np.median([r[f'auroc_{m}'] for r in sub]):.3f}" for m in scores)
            + f" | {np.median([r['known_accuracy'] for r in sub]):.3f} |"
        )
    lines += [
        f"| **median over {len(rows)} splits** | | | | "
        + " | ".join(f"**{med[m]:.3f}**" for m in scores)
        + f" | {acc:.3f} |",
        "| splits where best | | | | " + " | ".join(str(wins[m]) for m in scores) + " | |",
        "| mean over splits | | | | "
        + " | ".join(f"{np.mean([r[f'auroc_{m}'] for r in rows]):.3f}" for m in scores)
        + f" | {np.mean([r['known_accuracy'] for r in rows]):.3f} |",
        "| splits with AUROC >= 0.8 | | | | "
        + " | ".join(str(sum(r[f"auroc_{m}"] >= 0.8 for r in rows)) for m in scores)
        + " | |",
        "",
        "## At the reference threshold (95% quantile of the score on held-out labelled reference cells)",
        "",
        "Median share of the left-out type's query cells marked unknown / of the known types' query cells marked "
        "unknown (the latter is the false-alarm rate; a new batch moves the query away from the reference, so it "
        "exceeds 5%).",
        "",
        f"| | {head} |",
        "|---|" + "---|" * len(scores),
        "| unseen marked | "
        + " | ".join(f"{np.median([r[f'flagged_unseen_{m}'] for r in rows]):.2f}" for m in scores)
        + " |",
        "| known marked | "
        + " | ".join(f"{np.median([r[f'flagged_known_{m}'] for r in rows]):.2f}" for m in scores)
        + " |",
    ]
    OUT.with_suffix(".md").write_text("\n".join(lines) + "\n")
    if not quiet:
        print("\n".join(lines))


if __name__ == "__main__":
    main()
