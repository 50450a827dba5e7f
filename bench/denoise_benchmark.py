"""Denoising: hide 10% of the non-zero counts, train on the rest, predict the hidden counts.

    python bench/denoise_benchmark.py                               # pbmc_ifnb_stimulation, 100 epochs
    python bench/denoise_benchmark.py --data pbmc_3chemistries.h5ad --batch-key batch --epochs 200

Protocol (as in Lopez et al. 2018, imputation): a fixed-seed 10% of the non-zero entries of X are set
to 0; each method predicts the expected count of those entries from the corrupted data:

- naive: library-size normalisation, ``lib[c] * sum_c' x[c', g] / sum(x)`` (the gene's average
  share times the cell's total, both from the corrupted data);
- cellvi / scvi-tools: ``get_normalized_expression(library_size="latent", n_samples=25)``, i.e. the
  decoder's mean count at the cell's observed library (bench/de_worker.py --task denoise).

Scores on the hidden entries (lower is better): median and mean absolute error, and mean Poisson
deviance ``2 (x log(x / mu) - x + mu)``. Genes seen in fewer than --min-cells cells are dropped first.
Results: bench/results/denoise_benchmark.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from de_benchmark import DATA, RESULTS, SHARED, run_worker  # noqa: E402


def corrupt(X: sp.csr_matrix, frac: float, seed: int):
    """Zero a random ``frac`` of the stored non-zero entries. Returns (corrupted, rows, cols, values)."""
    X = sp.csr_matrix(X, dtype=np.float32)
    X.eliminate_zeros()
    rows, cols = X.nonzero()
    pick = np.sort(np.random.default_rng(seed).choice(len(rows), int(round(frac * len(rows))), replace=False))
    r, c = rows[pick], cols[pick]
    values = np.asarray(X[r, c]).ravel().astype(np.float64)
    Y = X.tolil()
    Y[r, c] = 0
    Y = sp.csr_matrix(Y)
    Y.eliminate_zeros()
    return Y, r, c, values


def scores(truth: np.ndarray, pred: np.ndarray) -> dict:
    pred = np.maximum(pred, 1e-8)
    dev = 2 * (truth * np.log(truth / pred) - truth + pred)  # truth > 0 on hidden entries
    err = np.abs(truth - pred)
    return {"median_l1": float(np.median(err)), "mean_l1": float(err.mean()), "poisson_deviance": float(dev.mean())}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="pbmc_ifnb_stimulation.h5ad", help="file in the shared data folder")
    p.add_argument("--batch-key", default="")
    p.add_argument("--min-cells", type=int, default=50)
    p.add_argument("--frac", type=float, default=0.1)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--libs", nargs="+", default=["cellvi", "scvi"])
    p.add_argument("--out", default=str(RESULTS / "denoise_benchmark"))
    args = p.parse_args(argv)
    import anndata as ad

    DATA.mkdir(exist_ok=True)
    adata = ad.read_h5ad(SHARED / args.data)
    keep = np.asarray((adata.X > 0).sum(0)).ravel() >= args.min_cells
    adata = adata[:, keep].copy()
    Y, rows, cols, truth = corrupt(adata.X, args.frac, args.seed)
    adata.X = Y
    stem = DATA / f"denoise_{Path(args.data).stem}"
    adata.write_h5ad(str(stem) + ".h5ad")
    np.savez(str(stem) + "_mask.npz", rows=rows, cols=cols)

    lib = np.asarray(Y.sum(1)).ravel()
    share = np.asarray(Y.sum(0)).ravel() / Y.sum()
    out = {
        "data": args.data,
        "n_cells": adata.n_obs,
        "n_genes": adata.n_vars,
        "hidden_entries": len(truth),
        "frac": args.frac,
        "epochs": args.epochs,
        "threads": args.threads,
        "note": "timings on a shared machine; rerun on a quiet one",
        "naive": scores(truth, lib[rows] * share[cols]),
    }
    for name in args.libs:
        info = run_worker(
            name,
            "denoise",
            str(stem) + ".h5ad",
            DATA / f"denoise_{name}",
            args,
            epochs=args.epochs,
            batch_key=args.batch_key or None,
            mask=str(stem) + "_mask.npz",
        )
        pred = np.load(DATA / f"denoise_{name}.npz")["pred"]
        out[name] = {**scores(truth, pred), "train_s": info["train_s"], "denoise_s": info["denoise_s"]}
        print(name, out[name])
    Path(args.out + ".json").write_text(json.dumps(out, indent=1))
    lines = [
        "# Denoising benchmark",
        "",
        f"`python bench/denoise_benchmark.py --data {args.data} --epochs {args.epochs}`: {args.frac:.0%} of "
        f"the non-zero counts of {out['n_cells']} cells x {out['n_genes']} genes hidden ({len(truth)} entries), "
        "scored on those entries (lower is better). Timings from a shared machine: noisy.",
        "",
        "| method | median L1 | mean L1 | Poisson deviance | train s |",
        "|---|---|---|---|---|",
    ]
    for name in ["naive", *args.libs]:
        r = out[name]
        lines.append(
            f"| {name} | {r['median_l1']:.3f} | {r['mean_l1']:.3f} | {r['poisson_deviance']:.3f} | "
            f"{r.get('train_s', float('nan')):.0f} |"
        )
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
