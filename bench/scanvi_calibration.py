"""Calibration of SCANVI label transfer: expected calibration error (ECE) of ``predict(soft=True)`` on
query cells before and after ``SCANVI.calibrate()`` (temperature scaling on held-out labelled
reference cells), leave-one-batch-out on the shared labelled sets.

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python bench/scanvi_calibration.py

For each dataset, held-out batch and seed: SCVI on the other batches, SCANVI from it
(``train_size=0.9``: the labelled validation cells are the calibration set), ``calibrate()``, then
``load_query_data`` for the held-out batch (labels hidden), trained; ECE (15 bins) and accuracy of the
query predictions against the annotation, with the temperature fitted on the reference (the query is
never used to fit it). Results: bench/results/scanvi_calibration.{json,md} (medians over seeds).
``--scvi-tools`` (run with the scvi-tools env's python after the cellvi run) adds scvi-tools 1.4.2's
query ECE, confidence and accuracy under the same protocol (scvi-tools has no calibration step);
``--report`` rewrites the table.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import anndata
import numpy as np

from worker import peak_rss_mib  # bench/ is on the path when run as a script

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CELLVI_DATA_DIR", REPO.parent / "shared" / "data"))
DATASETS = ["pbmc_3chemistries.h5ad", "cellbench_3celllines_2protocols.h5ad"]
SEEDS = [0, 1]
EPOCHS = {"scvi": 80, "scanvi": 15, "query": 40}


def calibrated_query_model(ref, query, epochs: dict):
    """cellvi's protocol on one split: SCVI on ``ref`` (labels from obs "cell_type"), SCANVI from it
    (``train_size=0.9``), ``calibrate()``, then ``query`` (its "cell_type" dropped) mapped with
    ``load_query_data`` and trained. Returns (the calibration report, the query model)."""
    import cellvi

    ref.obs["labels"] = ref.obs["cell_type"].astype(str)
    cellvi.model.SCVI.setup_anndata(ref, batch_key="batch", labels_key="labels")
    vae = cellvi.model.SCVI(ref, n_latent=10, encode_covariates=True)
    vae.train(max_epochs=epochs["scvi"])
    lvae = cellvi.model.SCANVI.from_scvi_model(vae, unlabeled_category="Unknown")
    lvae.train(max_epochs=epochs["scanvi"], train_size=0.9)
    report = lvae.calibrate()
    query.obs = query.obs.drop(columns=["cell_type"])
    qm = cellvi.model.SCANVI.load_query_data(query, lvae)
    qm.train(max_epochs=epochs["query"])
    return report, qm


def one_split(adata, held, seed: int) -> dict:
    import cellvi
    from cellvi.analysis.calibration import expected_calibration_error

    cellvi.settings.seed = seed
    ref = adata[adata.obs["batch"] != held].copy()
    query = adata[adata.obs["batch"] == held].copy()
    truth = query.obs["cell_type"].astype(str).to_numpy()
    report, qm = calibrated_query_model(ref, query, EPOCHS)
    classes = list(qm.classes_)
    known = np.isin(truth, classes)
    codes = np.array([classes.index(t) if t in classes else -1 for t in truth])
    out = {
        "temperature": report["temperature"],
        "reference_ece_before": report["ece_before"],
        "reference_ece_after": report["ece_after"],
    }
    for tag, t in (("before", 1.0), ("after", report["temperature"])):
        qm.temperature_ = t
        probs = qm.predict(soft=True).to_numpy()
        out[f"query_ece_{tag}"] = expected_calibration_error(probs[known], codes[known])
        out[f"query_mean_confidence_{tag}"] = float(probs[known].max(1).mean())
    out["query_accuracy"] = float((probs[known].argmax(1) == codes[known]).mean())
    return out


def one_split_scvi_tools(adata, held, seed: int) -> dict:
    """The same protocol in scvi-tools 1.4.2 (run in its env): no calibration there, ECE as it comes."""
    import scvi
    from cellvi_ece import expected_calibration_error

    scvi.settings.seed = seed
    ref = adata[adata.obs["batch"] != held].copy()
    query = adata[adata.obs["batch"] == held].copy()
    truth = query.obs["cell_type"].astype(str).to_numpy()
    ref.obs["labels"] = ref.obs["cell_type"].astype(str)
    scvi.model.SCVI.setup_anndata(ref, batch_key="batch", labels_key="labels")
    vae = scvi.model.SCVI(ref, n_latent=10, encode_covariates=True)
    vae.train(max_epochs=EPOCHS["scvi"], enable_progress_bar=False)
    lvae = scvi.model.SCANVI.from_scvi_model(vae, unlabeled_category="Unknown")
    lvae.train(max_epochs=EPOCHS["scanvi"], train_size=0.9, enable_progress_bar=False)
    query.obs["labels"] = "Unknown"
    qm = scvi.model.SCANVI.load_query_data(query, lvae)
    qm.train(max_epochs=EPOCHS["query"], plan_kwargs={"weight_decay": 0.0}, enable_progress_bar=False)
    soft = qm.predict(soft=True)
    classes = list(soft.columns)
    known = np.isin(truth, classes)
    codes = np.array([classes.index(t) if t in classes else -1 for t in truth])
    probs = soft.to_numpy()
    return {
        "query_ece_before": expected_calibration_error(probs[known], codes[known]),
        "query_mean_confidence_before": float(probs[known].max(1).mean()),
        "query_accuracy": float((probs[known].argmax(1) == codes[known]).mean()),
    }


def scvi_tools_main() -> None:
    """``bench/.venv-scvi/bin/python bench/scanvi_calibration.py --scvi-tools``: adds scvi-tools' rows to
    the JSON written by the cellvi run (rerun the cellvi run's report with ``--report``)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("cellvi_ece", REPO / "src" / "cellvi" / "analysis" / "calibration.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["cellvi_ece"] = module
    warnings.simplefilter("ignore")
    path = REPO / "bench" / "results" / "scanvi_calibration.json"
    out = json.loads(path.read_text())
    for row in out["rows"]:
        adata = anndata.read_h5ad(DATA / row["dataset"])
        runs = [one_split_scvi_tools(adata, row["held_out_batch"], s) for s in SEEDS]
        row["scvi_tools"] = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
        print(row["dataset"], row["held_out_batch"], row["scvi_tools"], flush=True)
    path.write_text(json.dumps(out, indent=1))


def report(out: dict) -> None:
    rows, peak = out["rows"], out["peak_rss_mib"]
    lines = [
        "# SCANVI calibration (temperature scaling), leave-one-batch-out",
        "",
        (
            f"Medians over seeds {SEEDS}; epochs {EPOCHS}. cellvi: `PYTHONPATH=src python "
            "bench/scanvi_calibration.py`; scvi-tools 1.4.2 (same protocol, no calibration): "
            "`bench/.venv-scvi/bin/python bench/scanvi_calibration.py --scvi-tools`, then `--report`."
        ),
        "",
        (
            "| dataset | held-out batch | T | query ECE before | query ECE after | query confidence before / after "
            "| query accuracy | reference (calibration cells) ECE before / after | scvi-tools query ECE | "
            "scvi-tools confidence | scvi-tools accuracy |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        sv = r.get("scvi_tools")
        tail = (
            f"{sv['query_ece_before']:.3f} | {sv['query_mean_confidence_before']:.3f} | {sv['query_accuracy']:.3f}"
            if sv
            else "not run | | "
        )
        lines.append(
            f"| {r['dataset'].removesuffix('.h5ad')} | {r['held_out_batch']} | {r['temperature']:.2f} | "
            f"{r['query_ece_before']:.3f} | {r['query_ece_after']:.3f} | {r['query_mean_confidence_before']:.3f} / "
            f"{r['query_mean_confidence_after']:.3f} | {r['query_accuracy']:.3f} | "
            f"{r['reference_ece_before']:.3f} / {r['reference_ece_after']:.3f} | {tail} |"
        )
    lines += [
        "",
        (
            f"Peak RSS {peak:.0f} MiB (cellvi run). ECE: 15 equal-width confidence bins, on query cells of "
            "types the reference knows. Load averages during the cellvi run: "
            f"{[round(x, 1) for x in out['load']]} (shared machine)."
        ),
    ]
    (REPO / "bench" / "results" / "scanvi_calibration.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:

    if "--scvi-tools" in sys.argv:
        scvi_tools_main()
        return
    if "--report" in sys.argv:
        report(json.loads((REPO / "bench" / "results" / "scanvi_calibration.json").read_text()))
        return
    warnings.simplefilter("ignore")
    import cellvi

    cellvi.settings.progress_bar = False
    rows = []
    for name in DATASETS:
        adata = anndata.read_h5ad(DATA / name)
        for held in sorted(adata.obs["batch"].astype(str).unique()):
            runs = [one_split(adata, held, s) for s in SEEDS]
            row = {
                "dataset": name,
                "held_out_batch": held,
                **{k: float(np.median([r[k] for r in runs])) for k in runs[0]},
            }
            rows.append(row)
            print(json.dumps(row))
    peak = peak_rss_mib()
    out = {"seeds": SEEDS, "epochs": EPOCHS, "rows": rows, "peak_rss_mib": peak, "load": os.getloadavg()}
    results = REPO / "bench" / "results"
    (results / "scanvi_calibration.json").write_text(json.dumps(out, indent=1))
    report(out)


if __name__ == "__main__":
    main()
