"""Train one LinearSCVI (scvi-tools or cellvi: same API) on an .h5ad and write its loadings (CSV) and
figures (JSON). Runs unchanged under either environment:

    bench/.venv-scvi/bin/python bench/linear_decoder_worker.py --lib scvi   --data D.h5ad --out OUT
    .venv/bin/python            bench/linear_decoder_worker.py --lib cellvi --data D.h5ad --out OUT
"""

from __future__ import annotations

import argparse
import json
import time

from worker import peak_rss_mib  # bench/ is on the path when run as a script


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--lib", choices=["scvi", "cellvi"], required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True, help="prefix: OUT.csv (loadings) and OUT.json")
    p.add_argument("--epochs", type=int, default=250)
    p.add_argument("--n-latent", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--loadings", default=None, help="cellvi only: nonneg or free")
    p.add_argument("--l1", type=float, default=0.0, help="cellvi only: l1_loadings")
    p.add_argument("--batch-key", default="batch")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    import anndata
    import torch

    torch.set_num_threads(a.threads)
    lib = __import__(a.lib)
    lib.settings.seed = a.seed
    adata = anndata.read_h5ad(a.data)
    lib.model.LinearSCVI.setup_anndata(adata, batch_key=a.batch_key)
    kwargs = {"n_latent": a.n_latent}
    if a.lib == "cellvi" and a.loadings:
        kwargs["loadings"] = a.loadings
    if a.l1:
        kwargs["l1_loadings"] = a.l1
    model = lib.model.LinearSCVI(adata, **kwargs)
    t = time.perf_counter()
    train_kwargs = {"max_epochs": a.epochs}
    if a.lib == "scvi":
        train_kwargs["accelerator"] = "cpu"
        train_kwargs["enable_progress_bar"] = False
    else:
        train_kwargs["enable_progress_bar"] = False
    model.train(**train_kwargs)
    train_s = time.perf_counter() - t
    model.get_loadings().to_csv(a.out + ".csv")
    info = {
        "lib": a.lib,
        "version": lib.__version__,
        "train_s": train_s,
        "epochs": a.epochs,
        "n_latent": a.n_latent,
        "loadings": a.loadings,
        "l1_loadings": a.l1,
        "seed": a.seed,
        "peak_rss_mib": peak_rss_mib(),
    }
    with open(a.out + ".json", "w") as fh:
        json.dump(info, fh)


if __name__ == "__main__":
    main()
