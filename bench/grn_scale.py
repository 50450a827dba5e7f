"""Scale of cellvi.grn end to end: GRN per cluster, one knockout, transitions and the grid.

Each size runs in its own process (peak RSS per size). Data: ``cellvi.data.simulate(trajectory=True)`` counts,
log-normalised; 10 clusters (pseudotime bins x branch); candidate regulators: 300 genes as the "TF list";
embedding: 2-D PCA of the log-normalised data (computing a UMAP is outside what is timed, and at 50k
cells would dominate this shared 2-core machine). Defaults: 20 bootstraps, alpha 10, k = 30 neighbours,
40 x 40 grid.

    PYTHONPATH=src python bench/grn_scale.py                       # the default sizes
    PYTHONPATH=src python bench/grn_scale.py --sizes 50000x3000    # one size

    PYTHONPATH=src python bench/grn_scale.py --chunked --out grn_scale_chunked --sizes 1000000x3000 --keep-rows

Writes bench/results/grn_scale.json and .md (``--out`` names another results file).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from worker import peak_rss_mib  # bench/ is on the path when run as a script

HERE = Path(__file__).resolve().parent


def _clusters(adata) -> None:
    """obs["cluster"]: the simulated cell type x 4 pseudotime bins."""
    import pandas as pd

    t = adata.obs["pseudotime"].to_numpy() if "pseudotime" in adata.obs else np.zeros(adata.n_obs)
    bins = np.minimum((t * 4).astype(int), 3)
    seg = adata.obs["cell_type"].astype(str).to_numpy()
    adata.obs["cluster"] = pd.Categorical([f"{s}_{b}" for s, b in zip(seg, bins)])


def _grn_run(adata, n_tfs: int, timings: dict, **oracle_kwargs) -> dict:
    """The timed part: Oracle (expression), a GRN per cluster, one knockout; the figures of the run."""
    from cellvi import grn

    rss_before = peak_rss_mib()
    tfs = list(adata.var_names[:n_tfs])
    start = time.perf_counter()
    pseudotime = "pseudotime" if "pseudotime" in adata.obs else None
    o = grn.Oracle(adata, "cluster", "X_pca2", tfs=tfs, pseudotime_key=pseudotime, **oracle_kwargs)
    expression_s = time.perf_counter() - start
    o.fit_grn(n_bootstraps=20, p=0.001, top_k=2000)
    res = o.simulate_shift({tfs[0]: 0.0}, n_propagation=3)
    total = time.perf_counter() - start
    return {
        "cells": adata.n_obs,
        "genes": adata.n_vars,
        "tfs": len(tfs),
        **({"chunked": True, "size_factors_s": expression_s} if oracle_kwargs else {}),
        "clusters": int(adata.obs["cluster"].nunique()),
        "edges_kept": len(o.links),
        "total_s": total,
        **{k: round(v, 3) for k, v in o.timings.items()},
        **{k: round(v, 3) for k, v in res.timings.items()},
        **timings,
        "transition_nnz": int(res.transitions.nnz),
        "peak_rss_mib": peak_rss_mib(),
        "peak_rss_before_grn_mib": rss_before,
    }


def one(n_cells: int, n_genes: int, n_tfs: int, seed: int = 0) -> dict:
    sys.path.insert(0, str(HERE.parent / "src"))
    from sklearn.decomposition import PCA

    import cellvi
    from cellvi import grn

    t0 = time.perf_counter()
    adata = cellvi.data.simulate(
        n_cells=n_cells, n_genes=n_genes, n_batches=2, trajectory=True, seed=seed, de_fraction=0.2
    )
    sim_s = time.perf_counter() - t0
    _clusters(adata)
    t0 = time.perf_counter()
    expr, _ = grn.expression_matrix(adata)
    # fitted on 5,000 cells, applied to all in blocks: the embedding is not what is measured
    sub = np.random.default_rng(0).choice(n_cells, min(n_cells, 5000), replace=False)
    pca = PCA(2, random_state=0, svd_solver="randomized").fit(expr[np.sort(sub)])
    adata.obsm["X_pca2"] = np.concatenate([pca.transform(expr[i : i + 5000]) for i in range(0, n_cells, 5000)]).astype(
        np.float32
    )
    del expr
    emb_s = time.perf_counter() - t0
    return _grn_run(adata, n_tfs, {"simulate_s": sim_s, "pca_s": emb_s})


def one_chunked(n_cells: int, n_genes: int, n_tfs: int, seed: int = 0) -> dict:
    """The same pipeline from a backed .h5ad: counts read a block of cells at a time (chunked expression)."""
    sys.path.insert(0, str(HERE.parent / "src"))
    import anndata as ad
    from sklearn.decomposition import PCA

    import cellvi
    from cellvi import grn

    path = HERE / "data" / f"grn_{n_cells}x{n_genes}.h5ad"
    t0 = time.perf_counter()
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        cellvi.data.simulate(
            n_cells=n_cells, n_genes=n_genes, n_batches=2, trajectory=True, seed=seed, de_fraction=0.2, path=path
        )
    sim_s = time.perf_counter() - t0
    adata = ad.read_h5ad(path, backed="r")
    _clusters(adata)
    t0 = time.perf_counter()
    rows = grn.CountRows(adata.X, grn.size_factors(adata.X, "total"))  # the embedding only: not what is timed
    sub = np.sort(np.random.default_rng(0).choice(n_cells, min(n_cells, 5000), replace=False))
    pca = PCA(2, random_state=0, svd_solver="randomized").fit(rows[sub])
    adata.obsm["X_pca2"] = np.concatenate(
        [pca.transform(rows[np.arange(i, min(i + 5000, n_cells))]) for i in range(0, n_cells, 5000)]
    ).astype(np.float32)
    emb_s = time.perf_counter() - t0
    return _grn_run(adata, n_tfs, {"simulate_s": sim_s, "pca_s": emb_s}, batch_key="batch")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="5000x3000,10000x3000,20000x3000,50000x3000,10000x500,10000x1000")
    ap.add_argument("--tfs", type=int, default=300)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument(
        "--chunked",
        action="store_true",
        help="data from a backed .h5ad (bench/data/grn_<cells>x<genes>.h5ad, made once), chunked expression",
    )
    ap.add_argument("--out", default="grn_scale", help="results name under bench/results/")
    ap.add_argument("--render", action="store_true", help="only rewrite the .md from the .json")
    ap.add_argument(
        "--keep-rows",
        action="store_true",
        help="keep the other sizes' rows of the existing results file (a size run again replaces its row)",
    )
    args = ap.parse_args()
    if args.render:
        render(args.out)
        return
    if args.child:
        n, g = map(int, args.child.split("x"))
        print(json.dumps((one_chunked if args.chunked else one)(n, g, min(args.tfs, g))))
        return
    rows = []
    previous = HERE / "results" / f"{args.out}.json"
    if args.keep_rows and previous.exists():
        again = set(args.sizes.split(","))
        rows = [
            r for r in json.loads(previous.read_text())["rows"] if f"{r.get('cells')}x{r.get('genes')}" not in again
        ]
    for size in args.sizes.split(","):
        load = os.getloadavg()[0]
        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        wall0 = time.perf_counter()
        proc = subprocess.run(
            check=False,
            args=[sys.executable, __file__, "--child", size, "--tfs", str(args.tfs)]
            + (["--chunked"] if args.chunked else []),
            capture_output=True,
            text=True,
        )
        if proc.returncode:
            rows.append({"size": size, "error": proc.stderr[-1500:]})
        else:
            cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu_s = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
            # a child's CPU seconds over its wall seconds: below 1 at one thread, the machine was shared
            share = cpu_s / (time.perf_counter() - wall0)
            rows.append({**json.loads(proc.stdout.strip().splitlines()[-1]), "load_before": load, "cpu_share": share})
        print(rows[-1], flush=True)
    out = {"rows": rows, "threads": os.environ.get("OMP_NUM_THREADS"), "cpus": os.cpu_count(), "chunked": args.chunked}
    if args.keep_rows and previous.exists():
        out["note"] = json.loads(previous.read_text()).get("note")
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / f"{args.out}.json").write_text(json.dumps(out, indent=1))
    render(args.out)


def _growth(rows, key, fixed_key, fixed):
    pts = sorted((r[key], r["total_s"]) for r in rows if "error" not in r and r[fixed_key] == fixed)
    if len(pts) < 2:
        return ""
    (x0, t0), (x1, t1) = pts[0], pts[-1]
    slope = np.log(t1 / t0) / np.log(x1 / x0)
    return f"{key} {x0} -> {x1} at {fixed} {fixed_key}: {t0:.0f} -> {t1:.0f} s (time ~ {key}^{slope:.2f})"


def render(name: str) -> None:
    """Write bench/results/NAME.md from NAME.json."""
    res = json.loads((HERE / "results" / f"{name}.json").read_text())
    rows, chunked = res["rows"], res.get("chunked", False)
    lines = [
        "# cellvi.grn at scale (one run per size; shared 2-core machine, times are noisy)",
        "",
        (
            "End to end = GRN per cluster (8 clusters: branch x pseudotime quarter; 20 bootstraps, 300 candidate "
            "TFs, all genes as targets) + one knockout (propagation, kNN, sparse transitions, shift, grid, "
            "score). Not timed: simulating the data, "
            + (
                "the 2-D PCA embedding. Chunked: the data are a backed .h5ad (`cellvi.data.simulate(path=...)`), "
                "`Oracle` reads it block by block (`CountRows`, `RowBlocks`); the size factors (median of ratios, "
                "timed) and `batch_key='batch'` are included."
                if chunked
                else "log-normalising and the 2-D PCA embedding."
            )
        ),
        "",
        (
            "| cells | genes | total s | fit GRN s | kNN s | propagation + transitions s | grid s | peak RSS MiB "
            "| load before | CPU share |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['size']} | error: {r['error'][-100:]!r} ||||||||")
            continue
        tr = r.get("propagate_transitions_s", r.get("propagate_s", 0) + r.get("transitions_s", 0))
        lines.append(
            f"| {r['cells']} | {r['genes']} | {r['total_s']:.1f} | {r['fit_grn_s']:.1f} | "
            f"{r['knn_s']:.2f} | {tr:.1f} | {r['grid_s']:.2f} | {r['peak_rss_mib']:.0f} | {r['load_before']:.1f} | "
            + (f"{r['cpu_share']:.2f} |" if "cpu_share" in r else "|")
        )
    by_genes = [g for g in (_growth(rows, "genes", "cells", c) for c in (50000, 10000)) if g][:1]
    growth = [g for g in [_growth(rows, "cells", "genes", 3000), *by_genes] if g]
    lines += ["", "Growth (end-to-end time, between these rows' runs): " + "; ".join(growth) + "."] if growth else []
    lines += [
        "",
        "CPU share: the run's CPU seconds over its wall seconds (one thread: 1.00 on a quiet machine).",
        "",
        (
            "Peak RSS is of the whole process, including making the data"
            + (" file" if chunked else " and its log-normalised copy")
            + " (the RSS before the GRN step is `peak_rss_before_grn_mib` in the .json)."
        ),
    ]
    if not chunked:
        lines += ["", "Larger data, from a backed file: `--chunked` (bench/results/grn_scale_chunked.md)."]
    if res.get("note"):
        lines += ["", res["note"]]
    (HERE / "results" / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
