"""Calibration of SCANVI label transfer: expected calibration error (ECE) of ``predict(soft=True)`` on
query cells before and after ``SCANVI.calibrate()`` (temperature scaling on held-out labelled
reference cells), leave-one-batch-out on the shared labelled sets.

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python bench/scanvi_calibration.py

For each dataset, held-out batch and seed: SCVI on the other batches, SCANVI from it
(``train_size=0.9``: the labelled validation cells are the calibration set), ``calibrate()``, then
``load_query_data`` for the held-out batch (labels hidden), trained; ECE (15 bins) and accuracy of the
query predictions against the annotation, with the temperature fitted on the reference (the query is
never used to fit it). Results: bench/results/scanvi_calibration.{json,md} (medians over seeds).
scvi-tools is not run here (its ECE is the "before" column's protocol without calibration).
"""

from __future__ import annotations

import json
import os
import resource
import warnings
from pathlib import Path

import anndata
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CELLVI_DATA_DIR", REPO.parent / "shared" / "data"))
DATASETS = ["pbmc_3chemistries.h5ad", "cellbench_3celllines_2protocols.h5ad"]
SEEDS = [0, 1]
EPOCHS = {"scvi": 80, "scanvi": 15, "query": 40}


def one_split(adata, held, seed: int) -> dict:
    import cellvi
    from cellvi.analysis.calibration import expected_calibration_error

    cellvi.settings.seed = seed
    ref = adata[adata.obs["batch"] != held].copy()
    query = adata[adata.obs["batch"] == held].copy()
    truth = query.obs["cell_type"].astype(str).to_numpy()
    ref.obs["labels"] = ref.obs["cell_type"].astype(str)
    cellvi.model.SCVI.setup_anndata(ref, batch_key="batch", labels_key="labels")
    vae = cellvi.model.SCVI(ref, n_latent=10, encode_covariates=True)
    vae.train(max_epochs=EPOCHS["scvi"])
    lvae = cellvi.model.SCANVI.from_scvi_model(vae, unlabeled_category="Unknown")
    lvae.train(max_epochs=EPOCHS["scanvi"], train_size=0.9)
    report = lvae.calibrate()
    query.obs = query.obs.drop(columns=["cell_type"])
    qm = cellvi.model.SCANVI.load_query_data(query, lvae)
    qm.train(max_epochs=EPOCHS["query"])
    classes = list(qm.classes_)
    known = np.isin(truth, classes)
    codes = np.array([classes.index(t) if t in classes else -1 for t in truth])
    out = {"temperature": report["temperature"], "reference_ece_before": report["ece_before"],
           "reference_ece_after": report["ece_after"]}
    for tag, t in (("before", 1.0), ("after", report["temperature"])):
        qm.temperature_ = t
        probs = qm.predict(soft=True).to_numpy()
        out[f"query_ece_{tag}"] = expected_calibration_error(probs[known], codes[known])
        out[f"query_mean_confidence_{tag}"] = float(probs[known].max(1).mean())
    out["query_accuracy"] = float((probs[known].argmax(1) == codes[known]).mean())
    return out


def main() -> None:
    warnings.simplefilter("ignore")
    import cellvi

    cellvi.settings.progress_bar = False
    rows = []
    for name in DATASETS:
        adata = anndata.read_h5ad(DATA / name)
        for held in sorted(adata.obs["batch"].astype(str).unique()):
            runs = [one_split(adata, held, s) for s in SEEDS]
            row = {"dataset": name, "held_out_batch": held,
                   **{k: float(np.median([r[k] for r in runs])) for k in runs[0]}}
            rows.append(row)
            print(json.dumps(row))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"seeds": SEEDS, "epochs": EPOCHS, "rows": rows, "peak_rss_mib": peak, "load": os.getloadavg()}
    results = REPO / "bench" / "results"
    (results / "scanvi_calibration.json").write_text(json.dumps(out, indent=1))
    lines = ["# SCANVI calibration (temperature scaling), leave-one-batch-out", "",
             f"Medians over seeds {SEEDS}; epochs {EPOCHS}; `PYTHONPATH=src python bench/scanvi_calibration.py`.", "",
             ("| dataset | held-out batch | T | query ECE before | query ECE after | query confidence before / after "
              "| query accuracy | reference (calibration cells) ECE before / after |"), "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['dataset'].removesuffix('.h5ad')} | {r['held_out_batch']} | {r['temperature']:.2f} | "
            f"{r['query_ece_before']:.3f} | {r['query_ece_after']:.3f} | {r['query_mean_confidence_before']:.3f} / "
            f"{r['query_mean_confidence_after']:.3f} | {r['query_accuracy']:.3f} | "
            f"{r['reference_ece_before']:.3f} / {r['reference_ece_after']:.3f} |"
        )
    lines += ["", (f"Peak RSS {peak:.0f} MiB. ECE: 15 equal-width confidence bins, on query cells of types the "
                   "reference knows.")]
    (results / "scanvi_calibration.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
