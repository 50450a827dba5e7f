"""Embeddings of one .h5ad for the integration benchmark (bench/integration.py), one library per run.

Runs unchanged under either environment (the same code path for cellvi and scvi-tools, both at their
defaults, as a user would call them):

    bench/.venv-scvi/bin/python bench/integration_worker.py --lib scvi   --data D.h5ad --batch-key batch \
        --label-key cell_type --seed 0 --out scvi_0.npz
    .venv/bin/python            bench/integration_worker.py --lib cellvi ...
    bench/.venv-scvi/bin/python bench/integration_worker.py --lib baselines ...   # Harmony, Scanorama

--lib cellvi / scvi, at their defaults:
    SCVI.setup_anndata(adata, batch_key=...); SCVI(adata); train(); get_latent_representation()
    then SCANVI.from_scvi_model(scvi_model, "Unknown", labels_key=...) with every cell labelled, train()
    (default epochs: a third of SCVI's heuristic clipped to [2, 10]); get_latent_representation().
--lib baselines (needs harmonypy and scanorama, installed by bench/setup_scvi_env.sh):
    counts normalised to the median total (scanpy normalize_total defaults) and log1p'd, all genes;
    Harmony: harmonypy.run_harmony on a 50-component PCA of that (scanpy pca defaults), every other
    argument at its default, random_state=seed;
    Scanorama: scanorama.integrate on the per-batch log-normalised matrices, defaults (dimred=100,
    knn=20, sigma=15, alpha=0.1), seed=seed.
The output .npz holds one (n_cells, d) array per embedding (cells in the file's order), the
seconds each took (training and latent) under ``seconds_<name>``, and the worker process's peak RSS
(``peak_rss_mib``, MiB, data loading included; the kernel's VmHWM, see worker.peak_rss_mib) and CPU
seconds (``cpu_seconds``, all its threads).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import numpy as np

from worker import peak_rss_mib  # bench/ is on the path when run as a script

THREADS = 1


def scvi_family(lib_name: str, adata, batch_key: str, label_key: str, seed: int) -> dict:
    import importlib

    import torch

    lib = importlib.import_module(lib_name)
    torch.set_num_threads(THREADS)
    if lib_name == "scvi":
        import logging

        lib.settings.verbosity = logging.WARNING
        lib.settings.num_threads = THREADS
    lib.settings.seed = seed
    out = {}
    t = time.perf_counter()
    lib.model.SCVI.setup_anndata(adata, batch_key=batch_key)
    model = lib.model.SCVI(adata)
    model.train(enable_progress_bar=False)
    out["SCVI"] = np.asarray(model.get_latent_representation(), dtype=np.float32)
    out["seconds_SCVI"] = time.perf_counter() - t
    out["epochs_SCVI"] = len(model.history["elbo_train"]) if "elbo_train" in model.history else -1
    t = time.perf_counter()
    scanvi = lib.model.SCANVI.from_scvi_model(model, unlabeled_category="Unknown", labels_key=label_key)
    scanvi.train(enable_progress_bar=False)
    out["SCANVI"] = np.asarray(scanvi.get_latent_representation(), dtype=np.float32)
    out["seconds_SCANVI"] = time.perf_counter() - t
    return out


def log_normalised(adata):
    import scanpy as sc

    norm = adata.copy()
    sc.pp.normalize_total(norm)
    sc.pp.log1p(norm)
    return norm


def baselines(adata, batch_key: str, seed: int) -> dict:
    import harmonypy
    import scanorama
    import scanpy as sc
    import scipy.sparse as sp

    out = {}
    norm = log_normalised(adata)
    t = time.perf_counter()
    sc.pp.pca(norm, n_comps=50)
    pca = norm.obsm["X_pca"]
    ho = harmonypy.run_harmony(pca, adata.obs, batch_key, random_state=seed, verbose=False)
    z = np.asarray(ho.Z_corr)
    out["Harmony"] = (z if z.shape[0] == adata.n_obs else z.T).astype(np.float32)
    out["seconds_Harmony"] = time.perf_counter() - t
    t = time.perf_counter()
    batches = adata.obs[batch_key].astype(str).to_numpy()
    names = list(dict.fromkeys(batches))
    X = sp.csr_matrix(norm.X)
    parts = [np.flatnonzero(batches == b) for b in names]
    genes = list(adata.var_names)
    integrated, _ = scanorama.integrate([X[p] for p in parts], [genes] * len(parts), seed=seed, verbose=0)
    emb = np.zeros((adata.n_obs, integrated[0].shape[1]), dtype=np.float32)
    for p, z in zip(parts, integrated):
        emb[p] = z
    out["Scanorama"] = emb
    out["seconds_Scanorama"] = time.perf_counter() - t
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lib", choices=["scvi", "cellvi", "baselines"], required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--batch-key", required=True)
    p.add_argument("--label-key", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    import anndata as ad

    adata = ad.read_h5ad(a.data)
    adata.obs[a.batch_key] = adata.obs[a.batch_key].astype(str).astype("category")
    adata.obs[a.label_key] = adata.obs[a.label_key].astype(str).astype("category")
    if a.lib == "baselines":
        out = baselines(adata, a.batch_key, a.seed)
    else:
        out = scvi_family(a.lib, adata, a.batch_key, a.label_key, a.seed)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out["peak_rss_mib"] = peak_rss_mib()  # VmHWM: ru_maxrss would include the driver's peak
    out["cpu_seconds"] = usage.ru_utime + usage.ru_stime
    tmp = a.out + ".part.npz"  # renamed when complete: an interrupted run leaves no half-written cache
    np.savez(tmp, **{k: np.asarray(v) for k, v in out.items()})
    os.replace(tmp, a.out)
    print(json.dumps({k: float(v) for k, v in out.items() if k.startswith(("seconds", "epochs", "peak_rss", "cpu_"))}))


if __name__ == "__main__":
    main()
