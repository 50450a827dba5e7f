"""SOLO doublet detection: cellvi.external.SOLO against scvi-tools' scvi.external.SOLO, same data.

Data: the first 5,000 cells with any counts of mouse_10x_10k (real counts); 8% of them (400 cells, fixed seed) are
replaced by the sum of their own counts and those of another random cell, so the truth is known
(doublets of any two cells, as in a real lane; the pairs come from the real cells, not from SOLO's
simulation). Each library, in its own process with 2 threads and the same seed: SCVI (its defaults,
``max_epochs=100``), then SOLO at its defaults (``from_scvi_model(model)``, ``train()``: up to 400
epochs, early stopping with patience 30), then ``predict()``. Scored: AUROC and average precision of
P(doublet) for the 400 true doublets, and the seconds of SOLO (from_scvi_model + train + predict).

    .venv/bin/python bench/solo_doublets.py [--seeds 3]

needs bench/.venv-scvi (bash bench/setup_scvi_env.sh). Writes bench/results/solo_doublets.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("CELLVI_DATA_DIR", HERE.parent.parent / "shared" / "data")) / "mouse_10x_10k.h5ad"
N_CELLS, N_DOUBLETS, EPOCHS = 5000, 400, 100


def make_data(path: Path) -> None:
    import anndata as ad
    import scipy.sparse as sp

    a = ad.read_h5ad(DATA)
    # cells with no counts left out: scvi-tools' SOLO gives them log library -inf, its validation loss is
    # then NaN and its early stopping ends training after the first epoch (seen with the one empty cell
    # among the first 5,000); cellvi encodes them with library 1
    a = a[np.asarray(a.X.sum(1)).ravel() > 0][:N_CELLS].copy()
    rng = np.random.default_rng(0)
    X = sp.csr_matrix(a.X).tolil()
    truth = np.zeros(a.n_obs, bool)
    truth[rng.choice(a.n_obs, N_DOUBLETS, replace=False)] = True
    Xc = sp.csr_matrix(a.X)
    for i in np.flatnonzero(truth):
        X[i] = Xc[i] + Xc[rng.choice(np.delete(np.arange(a.n_obs), i))]
    a.X = sp.csr_matrix(X, dtype=np.float32)
    a.obs["true_doublet"] = truth
    a.write_h5ad(path)


def worker(lib: str, data: str, seed: int, out: str) -> None:
    import anndata as ad
    import torch

    torch.set_num_threads(2)
    scvi = __import__("cellvi" if lib == "cellvi" else "scvi")
    scvi.settings.seed = seed
    a = ad.read_h5ad(data)
    scvi.model.SCVI.setup_anndata(a)
    model = scvi.model.SCVI(a)
    start = time.perf_counter()
    model.train(max_epochs=EPOCHS)
    scvi_s = time.perf_counter() - start
    start = time.perf_counter()
    solo = scvi.external.SOLO.from_scvi_model(model)
    solo.train()
    probs = solo.predict()
    solo_s = time.perf_counter() - start
    epochs = len(solo.history) if lib == "cellvi" else len(solo.history["train_loss_epoch"])
    p = probs.loc[a.obs_names, "doublet"].to_numpy()
    Path(out).write_text(json.dumps({"p": p.tolist(), "scvi_s": scvi_s, "solo_s": solo_s, "solo_epochs": epochs}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--worker", nargs=4, metavar=("LIB", "DATA", "SEED", "OUT"))
    args = ap.parse_args()
    if args.worker:
        lib, data, seed, out = args.worker
        worker(lib, data, int(seed), out)
        return
    import anndata as ad
    from sklearn.metrics import average_precision_score, roc_auc_score

    pythons = {"cellvi": HERE.parent / ".venv" / "bin" / "python", "scvi-tools": HERE / ".venv-scvi" / "bin" / "python"}
    runs: dict[str, list] = {lib: [] for lib in pythons}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "doublets.h5ad"
        make_data(data)
        truth = ad.read_h5ad(data, backed="r").obs["true_doublet"].to_numpy()
        for seed in range(args.seeds):
            for lib, py in pythons.items():  # alternate the libraries, seed by seed
                out = Path(tmp) / f"{lib}_{seed}.json"
                env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src")}
                subprocess.run(
                    [
                        str(py),
                        __file__,
                        "--worker",
                        "cellvi" if lib == "cellvi" else "scvi",
                        str(data),
                        str(seed),
                        str(out),
                    ],
                    check=True,
                    env=env,
                )
                r = json.loads(out.read_text())
                p = np.asarray(r.pop("p"))
                runs[lib].append(
                    dict(r, seed=seed, auroc=roc_auc_score(truth, p), ap=average_precision_score(truth, p))
                )
                print(lib, runs[lib][-1], flush=True)
    res = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "load_avg_end": os.getloadavg(),
        "runs": runs,
    }
    (HERE / "results" / "solo_doublets.json").write_text(json.dumps(res, indent=1))
    lines = [
        "# SOLO doublet detection: cellvi vs scvi-tools 1.4.2",
        "",
        f"{res['machine']}; 2 threads per run, libraries alternating seed by seed. Data: the first {N_CELLS:,} cells with counts of "
        f"mouse_10x_10k with {N_DOUBLETS} of them replaced by the sum of two real cells (known doublets, 8%). "
        f"SCVI at its defaults with max_epochs={EPOCHS}, then SOLO at its defaults (from_scvi_model, train, predict). "
        "Command: `.venv/bin/python bench/solo_doublets.py`.",
        "",
        "| library | seeds | AUROC | average precision | SOLO s (median) | SOLO epochs | SCVI s (median) |",
        "|---|---|---|---|---|---|---|",
    ]
    for lib, rs in runs.items():
        col = {k: [r[k] for r in rs] for k in rs[0]}
        lines.append(
            f"| {lib} | {len(rs)} | {np.mean(col['auroc']):.3f} ± {np.std(col['auroc'], ddof=1) if len(rs) > 1 else 0:.3f} "
            f"| {np.mean(col['ap']):.3f} ± {np.std(col['ap'], ddof=1) if len(rs) > 1 else 0:.3f} "
            f"| {np.median(col['solo_s']):.1f} | {', '.join(str(e) for e in col['solo_epochs'])} | {np.median(col['scvi_s']):.1f} |"
        )
    ratio = np.median([r["solo_s"] for r in runs["scvi-tools"]]) / np.median([r["solo_s"] for r in runs["cellvi"]])
    lines += [
        "",
        f"SOLO time, scvi-tools / cellvi (medians): {ratio:.1f}x. Mean ± sd over seeds.",
        "",
        "Cells with no counts are left out of the data: with the one such cell among the first 5,000 cells, "
        "scvi-tools' SOLO had log library -inf there, a NaN validation loss, and its early stopping ended "
        "training after one epoch (one NaN prediction); cellvi's encodes an empty cell with library 1.",
        "",
    ]
    (HERE / "results" / "solo_doublets.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
