"""Train one library (cellvi or scvi-tools, same API) on one .h5ad and run one task; used by
bench/de_benchmark.py and bench/denoise_benchmark.py, which prepare the data and score the outputs.

    python bench/de_worker.py --lib cellvi --task de --data D.h5ad --groupby condition \
        --group1 stim --group2 ctrl --epochs 50 --out OUT            # writes OUT.csv + OUT.json
    bench/.venv-scvi/bin/python bench/de_worker.py --lib scvi ...

Tasks: ``de`` (change-mode DE of group1 vs group2, table to OUT.csv), ``speed`` (one-vs-all
change-mode DE over --groupby, timed), ``denoise`` (expected counts at each cell's library on the
entries listed in --mask, a .npz of ``rows``/``cols``; predictions to OUT.npz).
Imports only numpy, pandas, anndata, torch and the library, so it runs in either environment.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import time

import numpy as np

SAME = dict(n_hidden=128, n_latent=10, n_layers=1, gene_likelihood="zinb")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lib", choices=["cellvi", "scvi"], required=True)
    p.add_argument("--task", choices=["de", "speed", "denoise"], required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch-key", default="", help="obs column of batches ('' for none)")
    p.add_argument("--groupby", default="cell_type")
    p.add_argument("--group1")
    p.add_argument("--group2")
    p.add_argument("--mask", help="denoise: .npz with rows, cols of the hidden entries")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output path without extension")
    a = p.parse_args(argv)

    import anndata as ad
    import torch

    torch.set_num_threads(a.threads)
    lib = importlib.import_module(a.lib)
    if a.lib == "scvi":
        import logging

        lib.settings.verbosity = logging.WARNING
        lib.settings.num_threads = a.threads
    else:
        lib.settings.progress_bar = False
    lib.settings.seed = a.seed

    adata = ad.read_h5ad(a.data)
    lib.model.SCVI.setup_anndata(adata, batch_key=a.batch_key or None)
    model = lib.model.SCVI(adata, **SAME)
    t = time.perf_counter()
    model.train(max_epochs=a.epochs, batch_size=128, train_size=0.9, enable_progress_bar=False)
    info = {
        "lib": a.lib,
        "task": a.task,
        "epochs": a.epochs,
        "train_s": time.perf_counter() - t,
        "n_cells": adata.n_obs,
        "n_genes": adata.n_vars,
        "threads": a.threads,
    }

    lib.settings.seed = a.seed
    if a.task == "de":
        t = time.perf_counter()
        res = model.differential_expression(
            groupby=a.groupby, group1=a.group1, group2=a.group2, mode="change", silent=True
        )
        info["de_s"] = time.perf_counter() - t
        res.to_csv(a.out + ".csv")
    elif a.task == "speed":
        n_groups = adata.obs[a.groupby].nunique()
        for mode in ("change", "vanilla"):
            t = time.perf_counter()
            res = model.differential_expression(groupby=a.groupby, mode=mode, silent=True)
            info[f"one_vs_all_{mode}_s"] = time.perf_counter() - t
            assert len(res) == n_groups * adata.n_vars
        info["n_groups"] = int(n_groups)
    else:
        hidden = np.load(a.mask)
        t = time.perf_counter()
        rate = model.get_normalized_expression(library_size="latent", n_samples=25, return_mean=True)
        rate = np.asarray(rate, dtype=np.float64)
        info["denoise_s"] = time.perf_counter() - t
        np.savez(a.out + ".npz", pred=rate[hidden["rows"], hidden["cols"]])
    with open(a.out + ".json", "w") as f:
        json.dump(info, f, indent=1)
    print(json.dumps(info))


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main()
