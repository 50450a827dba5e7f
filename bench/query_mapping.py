"""Label transfer by query mapping (scArches + scANVI): cellvi against scvi-tools on the same splits.

For each batch of a dataset: train a reference (SCVI, then SCANVI from it) on the other batches, map the
held-out batch with ``SCANVI.load_query_data`` (its labels hidden) and train on it, then score
* ``query_accuracy``: predicted vs annotated cell type of the held-out cells;
* ``knn_accuracy`` / ``batch_mixing`` of the joint latent (reference + query cells; 5-fold kNN,
  k=15; batch entropy among 50 neighbours, 1 = perfectly mixed);
* ``knn_transfer_accuracy``: a 15-NN classifier fitted on the reference cells' latent, applied to the
  query cells;
and the same for a SCANVI trained de novo on all cells with the held-out batch unlabelled, plus wall
times (reference training, query mapping = load + train, de novo training).

The script runs unchanged under either library (same API):

    python bench/query_mapping.py --lib cellvi --out bench/results/query_mapping_cellvi.json
    bench/.venv-scvi/bin/python bench/query_mapping.py --lib scvi --out bench/results/query_mapping_scvi.json
    python bench/query_mapping.py --report   # both JSONs -> bench/results/query_mapping.md

or ``python bench/query_mapping.py --all`` for the three steps. Timings on a shared machine are noisy:
rerun on a quiet one before quoting them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
DATA = Path(os.environ.get("CELLVI_DATA_DIR", REPO.parent / "shared" / "data"))
UNLABELED = "Unknown"
SAME = dict(n_hidden=128, n_latent=10, n_layers=1, encode_covariates=True)


def knn_accuracy(latent, labels, k=15, folds=5):
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=0)
    labels = np.asarray(labels)
    # classes rarer than the number of folds cannot be stratified; score the others
    keep = np.isin(labels, [c for c in np.unique(labels) if (labels == c).sum() >= folds])
    return float(np.mean(cross_val_score(KNeighborsClassifier(k), latent[keep], labels[keep], cv=cv)))


def batch_mixing(latent, batches, k=50):
    from sklearn.neighbors import NearestNeighbors

    _, codes = np.unique(np.asarray(batches).astype(str), return_inverse=True)
    idx = NearestNeighbors(n_neighbors=k + 1).fit(latent).kneighbors(latent, return_distance=False)[:, 1:]
    frac = np.stack([(codes[idx] == b).sum(1) for b in range(codes.max() + 1)], 1) / k
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(frac > 0, frac * np.log(frac), 0.0).sum(1)
    return float(ent.mean() / np.log(codes.max() + 1))


def knn_transfer(ref_latent, ref_labels, q_latent, q_labels, k=15):
    from sklearn.neighbors import KNeighborsClassifier

    clf = KNeighborsClassifier(k).fit(ref_latent, np.asarray(ref_labels))
    return float(np.mean(clf.predict(q_latent) == np.asarray(q_labels)))


def scores(joint, latent, n_ref, query_true):
    """Metrics of one fitted model whose joint latent is ``latent`` (reference cells first)."""
    truth = joint.obs["cell_type"].astype(str).to_numpy()
    return {
        "knn_accuracy": knn_accuracy(latent, truth),
        "batch_mixing": batch_mixing(latent, joint.obs["batch"]),
        "knn_transfer_accuracy": knn_transfer(latent[:n_ref], truth[:n_ref], latent[n_ref:], query_true),
    }


def run_split(scvi, adata, held_out, a):
    import anndata as ad

    ref = adata[adata.obs["batch"] != held_out].copy()
    query = adata[adata.obs["batch"] == held_out].copy()
    query_true = query.obs["cell_type"].astype(str).to_numpy()
    ref.obs["labels"] = ref.obs["cell_type"].astype(str)
    query.obs["labels"] = UNLABELED
    out = {"held_out": held_out, "n_reference": ref.n_obs, "n_query": query.n_obs}

    # reference: SCVI, then SCANVI from it (the scvi-tools workflow)
    scvi.settings.seed = a.seed
    t = time.perf_counter()
    scvi.model.SCVI.setup_anndata(ref, batch_key="batch", labels_key="labels")
    vae = scvi.model.SCVI(ref, **SAME)
    vae.train(max_epochs=a.scvi_epochs, enable_progress_bar=False)
    lvae = scvi.model.SCANVI.from_scvi_model(vae, unlabeled_category=UNLABELED)
    lvae.train(max_epochs=a.scanvi_epochs, enable_progress_bar=False)
    out["reference_train_s"] = time.perf_counter() - t
    ref_latent = lvae.get_latent_representation(ref)
    every = {"keep_observed": False} if a.lib == "cellvi" else {}  # the classifier's output on labelled cells too
    ref_pred_before = np.asarray(lvae.predict(ref, **every))

    # query mapping
    t = time.perf_counter()
    qm = scvi.model.SCANVI.load_query_data(query, lvae)
    qm.train(max_epochs=a.query_epochs, plan_kwargs=dict(weight_decay=0.0), enable_progress_bar=False)
    out["query_map_s"] = time.perf_counter() - t
    pred = np.asarray(qm.predict(query))
    out["query_accuracy"] = float(np.mean(pred == query_true))
    q_latent = qm.get_latent_representation(query)
    ref_latent_after = qm.get_latent_representation(ref) if a.lib == "cellvi" else None
    if ref_latent_after is not None:
        out["reference_latent_max_change"] = float(np.abs(ref_latent_after - ref_latent).max())
    out["reference_predictions_unchanged"] = float(np.mean(np.asarray(qm.predict(ref, **every)) == ref_pred_before))
    joint = ad.concat([ref, query])
    mapped = scores(joint, np.vstack([ref_latent, q_latent]), ref.n_obs, query_true)
    out.update({f"mapped_{k}": v for k, v in mapped.items()})

    # de novo: every cell, the held-out batch unlabelled, same epochs
    full = ad.concat([ref, query])
    scvi.settings.seed = a.seed
    t = time.perf_counter()
    scvi.model.SCVI.setup_anndata(full, batch_key="batch", labels_key="labels")
    vae = scvi.model.SCVI(full, **SAME)
    vae.train(max_epochs=a.scvi_epochs, enable_progress_bar=False)
    lv = scvi.model.SCANVI.from_scvi_model(vae, unlabeled_category=UNLABELED)
    lv.train(max_epochs=a.scanvi_epochs, enable_progress_bar=False)
    out["denovo_train_s"] = time.perf_counter() - t
    is_q = (full.obs["batch"] == held_out).to_numpy()
    out["denovo_query_accuracy"] = float(np.mean(np.asarray(lv.predict(full))[is_q] == query_true))
    lat = lv.get_latent_representation(full)
    out.update({f"denovo_{k}": v for k, v in scores(full, lat, ref.n_obs, query_true).items()})
    return out


def run(a):
    import torch

    torch.set_num_threads(a.threads)
    warnings.filterwarnings("ignore")
    scvi = importlib.import_module("cellvi" if a.lib == "cellvi" else "scvi")
    import anndata as ad

    adata = ad.read_h5ad(DATA / a.data)
    batches = a.held_out or sorted(adata.obs["batch"].astype(str).unique())
    rows = []
    for b in batches:
        row = run_split(scvi, adata, b, a)
        print(json.dumps(row), flush=True)
        rows.append(row)
    result = {
        "lib": a.lib,
        "version": scvi.__version__,
        "data": a.data,
        "threads": a.threads,
        "epochs": {"scvi": a.scvi_epochs, "scanvi": a.scanvi_epochs, "query": a.query_epochs},
        "splits": rows,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))


COLUMNS = [
    ("query_accuracy", "label transfer acc."),
    ("denovo_query_accuracy", "de novo acc."),
    ("mapped_knn_transfer_accuracy", "kNN transfer acc."),
    ("mapped_knn_accuracy", "joint kNN acc."),
    ("mapped_batch_mixing", "joint mixing"),
    ("denovo_knn_accuracy", "de novo kNN acc."),
    ("denovo_batch_mixing", "de novo mixing"),
    ("reference_train_s", "reference s"),
    ("query_map_s", "query map s"),
    ("denovo_train_s", "de novo s"),
]


def report(paths, out):
    lines = ["# Query mapping and label transfer (leave one batch out)", ""]
    for path in paths:
        if not Path(path).exists():
            continue
        r = json.loads(Path(path).read_text())
        lines += [
            f"## {r['lib']} {r['version']} on {r['data']} ({r['threads']} threads; epochs {r['epochs']})",
            "",
            "| held out | " + " | ".join(c[1] for c in COLUMNS) + " |",
            "|---" * (len(COLUMNS) + 1) + "|",
        ]
        for s in r["splits"]:
            lines.append(
                f"| {s['held_out']} | "
                + " | ".join(f"{s[c[0]]:.3f}" if "acc" in c[1] or "mix" in c[1] else f"{s[c[0]]:.1f}" for c in COLUMNS)
                + " |"
            )
        means = [np.mean([s[c[0]] for s in r["splits"]]) for c in COLUMNS]
        lines.append(
            "| mean | "
            + " | ".join(f"{m:.3f}" if "acc" in c[1] or "mix" in c[1] else f"{m:.1f}" for m, c in zip(means, COLUMNS))
            + " |"
        )
        lines.append("")
    lines.append(
        "Timings depend on machine load; reference latent change after query training (cellvi): "
        "see `reference_latent_max_change` in the JSON."
    )
    Path(out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lib", choices=["cellvi", "scvi"], default="cellvi")
    p.add_argument("--data", default="pbmc_3chemistries.h5ad")
    p.add_argument("--held-out", nargs="*", default=None, help="batches to hold out (default: each in turn)")
    p.add_argument("--scvi-epochs", type=int, default=200)
    p.add_argument("--scanvi-epochs", type=int, default=20)
    p.add_argument("--query-epochs", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    p.add_argument("--report", action="store_true", help="combine the two JSONs into markdown")
    p.add_argument("--all", action="store_true", help="run both libraries, then --report")
    a = p.parse_args()
    stem = Path(a.data).stem
    paths = [RESULTS / f"query_mapping_{stem}_{lib}.json" for lib in ("cellvi", "scvi")]
    if a.all:
        pythons = {"cellvi": sys.executable, "scvi": str(REPO / "bench" / ".venv-scvi" / "bin" / "python")}
        for lib, path in zip(("cellvi", "scvi"), paths):
            cmd = [
                pythons[lib],
                __file__,
                "--lib",
                lib,
                "--data",
                a.data,
                "--out",
                str(path),
                "--scvi-epochs",
                str(a.scvi_epochs),
                "--scanvi-epochs",
                str(a.scanvi_epochs),
                "--query-epochs",
                str(a.query_epochs),
                "--threads",
                str(a.threads),
                "--seed",
                str(a.seed),
            ]
            if a.held_out:
                cmd += ["--held-out", *a.held_out]
            subprocess.run(cmd, check=True)
    if a.report or a.all:
        report(paths, RESULTS / f"query_mapping_{stem}.md")
        return
    a.out = a.out or str(paths[0 if a.lib == "cellvi" else 1])
    run(a)


if __name__ == "__main__":
    main()
