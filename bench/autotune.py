"""cellvi.autotune against the defaults, on the shared labelled data sets, with a small trial budget.

For each data set: 10% of the cells (fixed seed) are held out as a test set. ``tune`` searches the default
space on the other 90% (objective: held-out ELBO on its own validation cells; median pruning), then the
tuned model and an SCVI at its defaults (same epochs) are scored on the test cells' ELBO and on the scIB
total of all cells' latent (cellvi.analysis.benchmark_integration when present, else scib-metrics'
Benchmarker directly, unscaled, 0.6 bio + 0.4 batch). Search time is wall time on a shared 2-core machine.

    PYTHONPATH=src .venv/bin/python bench/autotune.py [--n-trials 8] [--max-epochs 100] [--seeds 0]

Writes bench/results/autotune.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = Path(os.environ.get("CELLVI_DATA_DIR", REPO.parent / "shared" / "data"))
SETS = {"pbmc_3chemistries": ("batch", "cell_type"), "cellbench_3celllines_2protocols": ("batch", "cell_type")}


def scib_total(adata, key, batch_key, label_key) -> float:
    try:
        from cellvi.analysis import benchmark_integration
    except ImportError:
        benchmark_integration = None
    if benchmark_integration is not None:
        return float(benchmark_integration(adata, [key], batch_key, label_key, neighbors="exact").loc[key, "Total"])
    import scanpy as sc
    from scib_metrics.benchmark import Benchmarker

    tmp = adata.copy()
    sc.pp.normalize_total(tmp)
    sc.pp.log1p(tmp)
    sc.pp.pca(tmp, n_comps=30)
    adata.obsm["X_pca"] = tmp.obsm["X_pca"]
    bm = Benchmarker(
        adata,
        batch_key,
        label_key,
        embedding_obsm_keys=[key],
        pre_integrated_embedding_obsm_key="X_pca",
        n_jobs=1,
        progress_bar=False,
    )
    bm.benchmark()
    return float(bm.get_results(min_max_scale=False).loc[key, "Total"])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n-trials", type=int, default=8)
    p.add_argument("--max-epochs", type=int, default=100)
    p.add_argument("--n-jobs", type=int, default=1)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--sets", nargs="+", default=list(SETS))
    p.add_argument(
        "--no-scib", action="store_true", help="skip the scIB total (scib-metrics is slow on a loaded machine)"
    )
    args = p.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    import anndata

    import cellvi
    from cellvi.autotune import tune
    from cellvi.model import SCVI

    cellvi.settings.progress_bar = False
    rows = []
    for name in args.sets:
        batch_key, label_key = SETS[name]
        full = anndata.read_h5ad(DATA / f"{name}.h5ad")
        for seed in args.seeds:
            test = np.random.default_rng(seed).random(full.n_obs) < 0.1
            tune_set, test_set = full[~test].copy(), full[test].copy()
            out = Path(tempfile.mkdtemp(prefix=f"tune-{name}-"))
            t0 = time.perf_counter()
            result = tune(
                tune_set,
                n_trials=args.n_trials,
                n_jobs=args.n_jobs,
                max_epochs=args.max_epochs,
                batch_key=batch_key,
                seed=seed,
                output_dir=out,
            )
            search_s = time.perf_counter() - t0
            cellvi.settings.seed = seed
            SCVI.setup_anndata(tune_set, batch_key=batch_key)
            default = SCVI(tune_set)
            t1 = time.perf_counter()
            default.train(max_epochs=args.max_epochs)
            default_s = time.perf_counter() - t1
            row = {
                "data": name,
                "seed": seed,
                "n_cells": full.n_obs,
                "search_s": round(search_s, 1),
                "default_train_s": round(default_s, 1),
                "best_params": result.best_params,
                "trial_states": result.trials["state"].value_counts().to_dict(),
            }
            for label, model in (("tuned", result.model), ("default", default)):
                SCVI.setup_anndata(test_set, batch_key=batch_key)
                row[f"{label}_test_elbo"] = model.get_elbo(test_set)
                both = full.copy()
                both.obsm["X_eval"] = np.concatenate(
                    [
                        model.get_latent_representation(tune_set, obsm_key=None),
                        model.get_latent_representation(test_set, obsm_key=None),
                    ]
                )[np.argsort(np.concatenate([np.flatnonzero(~test), np.flatnonzero(test)]))]
                row[f"{label}_scib_total"] = (
                    float("nan") if args.no_scib else scib_total(both, "X_eval", batch_key, label_key)
                )
            rows.append(row)
            print(json.dumps(row, default=str), flush=True)
    res = {
        "command": "PYTHONPATH=src .venv/bin/python bench/autotune.py " + " ".join(sys.argv[1:]),
        "n_trials": args.n_trials,
        "max_epochs": args.max_epochs,
        "n_jobs": args.n_jobs,
        "runs": rows,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "note": (
            "small budget (few trials, few epochs) on a shared, loaded 2-core machine: times are noisy; "
            "tuned for held-out ELBO only; "
            + ("scIB total skipped (--no-scib)" if args.no_scib else "scIB total measured afterwards")
        ),
    }
    (HERE / "results" / "autotune.json").write_text(json.dumps(res, indent=1, default=str))
    md = [
        "# cellvi.autotune: tuned vs defaults",
        "",
        (
            f"`{res['command']}`: {args.n_trials} trials x "
            f"{args.max_epochs} epochs per data set, {args.n_jobs} process(es). {res['note']}."
        ),
        "",
        "Test ELBO: mean per cell on 10% held-out cells (nats, higher is better). scIB total: all cells, unscaled.",
        "",
        "| data | seed | test ELBO tuned | test ELBO default | scIB tuned | scIB default | search s | one default training s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    md += [
        f"| {r['data']} | {r['seed']} | {r['tuned_test_elbo']:.1f} | {r['default_test_elbo']:.1f} | "
        f"{r['tuned_scib_total']:.3f} | {r['default_scib_total']:.3f} | {r['search_s']} | {r['default_train_s']} |"
        for r in rows
    ]
    md += ["", "Best configurations:", ""] + [
        f"- {r['data']} seed {r['seed']}: `{r['best_params']}` (trials: {r['trial_states']})" for r in rows
    ]
    (HERE / "results" / "autotune.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
