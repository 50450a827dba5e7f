"""The seed spread behind tests/analysis/test_integration_regression.py, and what the test catches.

    .venv/bin/python bench/integration_regression.py                 # 8 seeds + the two broken models

Trains cellvi SCVI on pbmc_3chemistries exactly as the test does (defaults, except ``max_epochs`` and
a KL warm-up of the same length, so that the shortened run keeps the default schedule's shape; one
thread) for each seed, and two embeddings the test must reject, at seed 0: the 10-component PCA of
the log-normalised counts (no integration), and a model set up without ``batch_key`` (batch not
injected). All are scored in one :func:`cellvi.analysis.benchmark_integration` call (exact kNN, as
the test). Writes bench/results/integration_regression.{json,md}: per-seed bio conservation and batch
correction, their mean and sd, and the tolerance rule the test uses.
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
DATA = Path(os.environ.get("CELLVI_DATA_DIR", HERE.parent.parent / "shared" / "data")) / "pbmc_3chemistries.h5ad"
sys.path.insert(0, str(HERE.parent))  # the test module's settings are the ones measured here
from tests.analysis.test_integration_regression import EPOCHS, latent_of, load, pca10  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--results", default=str(HERE / "results"))
    a = p.parse_args(argv)
    from cellvi.analysis import benchmark_integration

    adata = load(str(DATA))
    seconds = []
    for seed in range(a.seeds):
        t = time.perf_counter()
        adata.obsm[f"seed {seed}"] = latent_of(adata, seed)
        seconds.append(time.perf_counter() - t)
        print(f"seed {seed}: {seconds[-1]:.0f} s", flush=True)
    adata.obsm["PCA (10 components)"] = pca10(adata)
    adata.obsm["no batch_key, seed 0"] = latent_of(adata, 0, batch_key=None)
    keys = list(adata.obsm)
    np.savez(Path(a.results).parent / "data" / "integration_regression_latents.npz", **{k: adata.obsm[k] for k in keys})
    t = time.perf_counter()
    df = benchmark_integration(adata, keys, "batch", "cell_type", neighbors="exact")
    score_s = time.perf_counter() - t
    seeds = df.loc[[f"seed {s}" for s in range(a.seeds)]]
    stats = {
        k: {"mean": float(seeds[k].mean()), "sd": float(seeds[k].std(ddof=1)), "min": float(seeds[k].min())}
        for k in df.columns
    }
    res = {
        "dataset": "pbmc_3chemistries",
        "epochs": EPOCHS,
        "kl_warmup_epochs": EPOCHS,
        "threads": 1,
        "per_embedding": df.to_dict(orient="index"),
        "seed_stats": stats,
        "train_seconds_median": float(np.median(seconds)),
        "score_seconds": score_s,
    }
    out = Path(a.results)
    (out / "integration_regression.json").write_text(json.dumps(res, indent=1))
    lines = [
        "# Integration regression test: seed spread and the embeddings it rejects",
        "",
        f"`python bench/integration_regression.py`: cellvi SCVI on pbmc_3chemistries, {EPOCHS} epochs with a "
        f"{EPOCHS}-epoch KL warm-up, one thread, seeds 0-{a.seeds - 1}; scib-metrics Benchmarker, exact kNN, "
        "unscaled. Training took a median "
        f"{np.median(seconds):.0f} s per seed, scoring all {len(keys)} embeddings {score_s:.0f} s (a shared, "
        "busy 2-core machine: noisy).",
        "",
        "| embedding | " + " | ".join(df.columns) + " |",
        "|---|" + "---|" * len(df.columns),
    ]
    for k, row in df.iterrows():
        lines.append(f"| {k} | " + " | ".join(f"{v:.4f}" for v in row) + " |")
    lines += [
        "",
        "| over seeds | mean | sd | min |",
        "|---|---|---|---|",
        *(f"| {k} | {v['mean']:.4f} | {v['sd']:.4f} | {v['min']:.4f} |" for k, v in stats.items()),
        "",
    ]
    (out / "integration_regression.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
