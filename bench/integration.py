"""Integration benchmark: scIB metrics of cellvi, scvi-tools, Harmony, Scanorama and PCA, over seeds.

    .venv/bin/python bench/integration.py                       # both labelled shared sets, 5 seeds
    .venv/bin/python bench/integration.py --h5ad my.h5ad --batch-key donor --label-key cell_type
    .venv/bin/python bench/integration.py --simulated 20000     # simulated, strong gene-specific batches

For each dataset and seed, bench/integration_worker.py computes the embeddings in a subprocess (see its
docstring for every method's defaults): cellvi SCVI and SCANVI in this environment, scvi-tools SCVI and
SCANVI and Harmony and Scanorama in bench/.venv-scvi (bench/setup_scvi_env.sh). Unintegrated PCA
(normalise_total + log1p + 50-component PCA, scanpy defaults, all genes) is computed here; it is
deterministic, so it is scored once. Every embedding of every seed is then scored in one call of
:func:`cellvi.analysis.benchmark_integration` (scib-metrics' Benchmarker at its defaults, PCA as the
unintegrated embedding, totals unscaled, 0.6 bio + 0.4 batch): unscaled scores of one embedding do not
depend on the others, so one call gives the same numbers as one call per seed.

Output, per dataset: bench/results/integration_<name>.{csv,json,md,png}: the per-seed scores (CSV),
mean ± sd per method of every metric (JSON, markdown) and the scib-metrics results table of the seed
means (plot_results_table) as a figure, and cellvi minus scvi-tools per metric (standard error, Welch's
p); bench/integration_report.py writes them. Embeddings and each embedding's scores are cached in
--work-dir (re-runs add seeds only). The 10-batch >= 100k-cell case of the issue, for time and memory:
`--datasets --simulated 100000 --sim-batches 10 --seeds 1 --libs cellvi scvi --cost-only` (training
time, CPU time and peak RSS per library; no scIB scores, whose cost at that size was not measured).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import pandas as pd

from integration_report import LIBS, SHARED, SUMMARY, write_cost, write_outputs

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SCVI_PY = Path(os.environ.get("SCVI_PYTHON", HERE / ".venv-scvi" / "bin" / "python"))  # setup_scvi_env.sh
DATA = Path(os.environ.get("CELLVI_DATA_DIR", REPO.parent / "shared" / "data"))


def simulated(n_cells: int, n_batches: int, path: Path, seed: int = 0) -> Path:
    """Strong gene-specific batch effects (per-gene log factors sd 1.0, library shifts sd 0.3) and nested
    cell types: 3 broad types x 3 subtypes, subtypes differing from their broad type in 3% of genes
    with smaller fold changes (written as obs["cell_type"] = subtype, obs["cell_type_broad"])."""
    import cellvi

    if path.exists():
        return path
    broad = cellvi.data.simulate(
        n_cells, 2000, n_batches, 3, seed=seed, batch_effect=1.0, batch_library_shift=0.3, de_fraction=0.1, de_lfc=2.0
    )
    rng = np.random.default_rng(seed)
    sub = rng.integers(0, 3, n_cells)
    import scipy.sparse as sp

    X = broad.X.toarray().astype(np.int32)  # 20k x 2000: 160 MB
    types = broad.obs["cell_type"].to_numpy()
    for t in range(3):  # subtype effects within each broad type: down-regulation by binomial thinning
        for s in range(3):
            cells = np.flatnonzero((types == f"type{t}") & (sub == s))
            genes = rng.choice(X.shape[1], int(0.03 * X.shape[1]), replace=False)
            factor = np.exp(-np.abs(rng.normal(0, 1.0, len(genes))))
            X[np.ix_(cells, genes)] = rng.binomial(X[np.ix_(cells, genes)], factor)
    broad.X = sp.csr_matrix(X.astype(np.float32))
    broad.obs["cell_type_broad"] = broad.obs["cell_type"].astype(str)
    broad.obs["cell_type"] = [f"{b}.{s}" for b, s in zip(broad.obs["cell_type_broad"], sub)]
    broad.write_h5ad(path)
    return path


def run_worker(lib: str, data: Path, batch_key: str, label_key: str, seed: int, out: Path) -> dict:
    if out.exists():
        return {"cached": True}
    py = sys.executable if lib == "cellvi" else str(SCVI_PY)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO / "src") if lib == "cellvi" else "",
    }
    cmd = [
        py,
        str(HERE / "integration_worker.py"),
        "--lib",
        lib,
        "--data",
        str(data),
        "--batch-key",
        batch_key,
        "--label-key",
        label_key,
        "--seed",
        str(seed),
        "--out",
        str(out),
    ]
    t = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
    print(f"  {lib} seed {seed}: {time.perf_counter() - t:.0f} s {res.stdout.strip()}", flush=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def unintegrated_pca(adata) -> np.ndarray:
    import scanpy as sc

    norm = adata.copy()
    sc.pp.normalize_total(norm)
    sc.pp.log1p(norm)
    sc.pp.pca(norm, n_comps=50)
    return norm.obsm["X_pca"]


def score_cached(adata, keys: list, batch_key: str, label_key: str, neighbors: str, cache: Path):
    """benchmark_integration of ``keys`` (the first is PCA, the unintegrated embedding), scoring only the
    embeddings not in ``cache`` (unscaled scores of one embedding do not depend on the others, so cached
    and new columns can be put together). Returns (df, benchmarker) of all ``keys``."""
    from cellvi.analysis import benchmark_integration

    raw = pd.read_pickle(cache) if cache.exists() else pd.DataFrame()
    todo = [keys[0]] + [k for k in keys[1:] if k not in raw.columns]
    _, bm = benchmark_integration(
        adata, todo, batch_key, label_key, pre_integrated_obsm_key=keys[0], neighbors=neighbors, return_benchmarker=True
    )
    new = bm._results
    raw = pd.concat([raw.drop(columns=[c for c in todo if c in raw.columns]), new.drop(columns="Metric Type")], axis=1)
    raw["Metric Type"] = new["Metric Type"]
    raw.to_pickle(cache)
    bm._results, bm._embedding_obsm_keys = raw[keys + ["Metric Type"]], list(keys)
    df = bm.get_results(min_max_scale=False)
    df = df.drop(index="Metric Type").astype(np.float64).loc[keys]
    df = df[[c for c in df.columns if c not in SUMMARY] + ["Batch correction", "Bio conservation", "Total"]]
    return df, bm


def worker_cost(work: Path, jobs: list) -> dict:
    """Median wall seconds per method, and median peak RSS (MiB) and CPU seconds per worker process
    (one per library and seed; recorded by workers since 2026-12-01), of the embeddings in ``work``."""
    seconds, rss, cpu = {}, {}, {}
    for lib, seed in jobs:
        z = np.load(work / f"{lib}_{seed}.npz")
        prefix, methods = LIBS[lib]
        for m in methods:
            seconds.setdefault(f"{prefix} {m}".strip(), []).append(float(z[f"seconds_{m}"]))
        if "peak_rss_mib" in z:
            worker = prefix or " + ".join(methods)
            rss.setdefault(worker, []).append(float(z["peak_rss_mib"]))
            cpu.setdefault(worker, []).append(float(z["cpu_seconds"]))

    def median(d: dict) -> dict:
        return {k: float(np.median(v)) for k, v in d.items()}

    return {"median_seconds": median(seconds), "worker_peak_rss_mib": median(rss), "worker_cpu_seconds": median(cpu)}


def bench_dataset(name: str, path: Path, batch_key: str, label_key: str, a) -> None:
    import anndata as ad
    import scib_metrics

    work = Path(a.work_dir) / name
    work.mkdir(parents=True, exist_ok=True)
    jobs = [(lib, seed) for seed in range(a.first_seed, a.first_seed + a.seeds) for lib in a.libs]
    if a.score_only:  # whatever embeddings are cached, any number of seeds per library
        jobs = sorted(
            ((p.stem.split("_")[0], int(p.stem.split("_")[1])) for p in work.glob("*_*.npz") if ".part" not in p.name),
            key=lambda j: (j[1], list(LIBS).index(j[0])),
        )
    print(f"{name}: {len(jobs)} worker runs", flush=True)
    with ThreadPoolExecutor(a.jobs) as pool:
        futures = [
            pool.submit(run_worker, lib, path, batch_key, label_key, seed, work / f"{lib}_{seed}.npz")
            for lib, seed in jobs
        ]
        for fut in as_completed(futures):
            if fut.exception() is not None:  # stop at the first failure, with its message
                for other in futures:
                    other.cancel()
                raise fut.exception()
    if a.embed_only:
        return
    cost = worker_cost(work, jobs)
    if a.cost_only:
        write_cost(name, path, batch_key, label_key, cost, a)
        return
    adata = ad.read_h5ad(path)
    adata.obsm["PCA"] = unintegrated_pca(adata)
    keys, rows = ["PCA"], [("PCA", 0)]
    for lib, seed in jobs:
        z = np.load(work / f"{lib}_{seed}.npz")
        prefix, methods = LIBS[lib]
        for m in methods:
            method = f"{prefix} {m}".strip()
            adata.obsm[f"{method}#{seed}"] = z[m]
            keys.append(f"{method}#{seed}")
            rows.append((method, seed))
    t = time.perf_counter()
    df, bm = score_cached(adata, keys, batch_key, label_key, a.neighbors, work / f"scores_{a.neighbors}.pkl")
    print(f"  scored {len(keys)} embeddings ({time.perf_counter() - t:.0f} s)", flush=True)
    scores = df.reset_index(drop=True)
    scores.insert(0, "seed", [s for _, s in rows])
    scores.insert(0, "method", [m for m, _ in rows])
    if a.previous_scores:  # per-seed rows of an earlier run, for (method, seed) pairs not recomputed here
        prev = pd.read_csv(a.previous_scores)
        have = set(zip(scores.method, scores.seed))
        prev = prev[[(m, s) not in have and m != "PCA" for m, s in zip(prev.method, prev.seed)]]
        scores = pd.concat([scores, prev[scores.columns]], ignore_index=True)
        jobs = jobs + [(m, int(s)) for m, s in zip(prev.method, prev.seed)]
        scores = scores.sort_values("seed", kind="stable").reset_index(drop=True)
    meta = dict(
        dataset=name,
        path=str(path),
        n_cells=int(adata.n_obs),
        n_genes=int(adata.n_vars),
        batch_key=batch_key,
        label_key=label_key,
        n_batches=int(adata.obs[batch_key].nunique()),
        n_labels=int(adata.obs[label_key].nunique()),
        seeds=sorted({s for _, s in jobs}),
        scib_metrics=scib_metrics.__version__,
        python=platform.python_version(),
        command="python " + " ".join(sys.argv),
        neighbors=a.neighbors,
        **cost,
    )
    write_outputs(name, meta, scores, bm, Path(a.out_dir))
    print((Path(a.out_dir) / f"integration_{name}.md").read_text(), flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="*", default=list(SHARED), help="shared sets (default both)")
    p.add_argument("--h5ad", help="another labelled multi-batch .h5ad (raw counts in X)")
    p.add_argument("--batch-key")
    p.add_argument("--label-key")
    p.add_argument("--simulated", type=int, default=0, help="also a simulated set of this many cells")
    p.add_argument("--sim-batches", type=int, default=4)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument(
        "--neighbors",
        choices=["pynndescent", "exact"],
        default="pynndescent",
        help="kNN for the scIB metrics: scib-metrics' default, or exact (as the regression test)",
    )
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--score-only", action="store_true", help="score the cached embeddings, run nothing")
    p.add_argument(
        "--previous-scores",
        help="CSV of an earlier run (bench/results/integration_<name>.csv): its per-seed rows are kept for "
        "the (method, seed) pairs whose embeddings are not cached (check first that a re-run seed reproduces them)",
    )
    p.add_argument("--embed-only", action="store_true", help="compute (and cache) the embeddings, score nothing")
    p.add_argument(
        "--cost-only",
        action="store_true",
        help="compute the embeddings and write their time and memory only (no scIB scores: for the large sets)",
    )
    p.add_argument(
        "--note",
        default="",
        help="with --cost-only: a sentence for the results files (e.g. a library whose run was stopped, and when)",
    )
    p.add_argument("--libs", nargs="*", default=list(LIBS), choices=list(LIBS))
    p.add_argument("--jobs", type=int, default=2, help="worker processes at once (1 thread each)")
    p.add_argument("--work-dir", default=str(HERE / "data" / "integration_work"))
    p.add_argument("--out-dir", default=str(HERE / "results"))
    a = p.parse_args(argv)
    sets = [(n, DATA / SHARED[n][0], *SHARED[n][1:]) for n in a.datasets]
    if a.h5ad:
        if not (a.batch_key and a.label_key):
            p.error("--h5ad needs --batch-key and --label-key")
        sets.append((Path(a.h5ad).stem, Path(a.h5ad), a.batch_key, a.label_key))
    if a.simulated:
        name = f"simulated_{a.simulated}_{a.sim_batches}b"
        Path(a.work_dir).mkdir(parents=True, exist_ok=True)
        sets.append(
            (name, simulated(a.simulated, a.sim_batches, Path(a.work_dir) / f"{name}.h5ad"), "batch", "cell_type")
        )
    for name, path, bk, lk in sets:
        bench_dataset(name, path, bk, lk, a)


if __name__ == "__main__":
    main()
