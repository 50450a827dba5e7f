"""The ``cellvi`` command line.

``cellvi demo`` trains scVI on a dataset (default: a built-in simulated one), then writes the AnnData with
the latent (``obsm["X_scvi"]``) and UMAP, a UMAP picture, and the saved model::

    cellvi demo --out demo_output                         # simulated data
    cellvi demo --data my.h5ad --batch-key batch --out results
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cellvi", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train scVI and write latent, UMAP and model")
    demo.add_argument("--data", help="an .h5ad of raw counts (default: simulated data)")
    demo.add_argument("--batch-key", help="adata.obs column of batches")
    demo.add_argument("--labels-key", help="adata.obs column of cell types, used to colour the UMAP")
    demo.add_argument("--layer", help="layer with raw counts (default: X)")
    demo.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    demo.add_argument("--max-epochs", type=int, help="training epochs (default: a heuristic)")
    demo.add_argument("--n-cells", type=int, default=10_000, help="cells of the simulated data")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    from cellvi.autotune import cli as tune_cli

    tune_cli.register(sub)
    return parser


def _load_or_simulate(args):
    import anndata

    import cellvi

    if args.data:
        path = Path(args.data)
        if not path.is_file():
            raise SystemExit(f"cellvi: no such file: {path}")
        return anndata.read_h5ad(path), args.batch_key, args.labels_key
    print(f"No --data given: simulating {args.n_cells} cells x 2000 genes (3 batches, 5 cell types).")
    adata = cellvi.data.simulate(n_cells=args.n_cells, n_genes=2000, n_batches=3, n_cell_types=5, seed=args.seed)
    return adata, "batch", "cell_type"


def run_demo(args) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import scanpy as sc

    import cellvi
    from cellvi.analysis import batch_mixing_entropy, knn_label_accuracy

    cellvi.settings.seed = args.seed
    cellvi.settings.progress_bar = not args.no_progress
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    adata, batch_key, labels_key = _load_or_simulate(args)
    cellvi.model.SCVI.setup_anndata(adata, layer=args.layer, batch_key=batch_key)
    model = cellvi.model.SCVI(adata)
    start = time.perf_counter()
    max_epochs = args.max_epochs
    if max_epochs is None and not args.data:
        max_epochs = 100  # the simulated data is learned well long before the heuristic's 400 epochs
    model.train(max_epochs=max_epochs)
    train_s = time.perf_counter() - start
    model.get_latent_representation(adata)  # stored in adata.obsm["X_scvi"]
    sc.pp.neighbors(adata, use_rep="X_scvi")
    sc.tl.umap(adata)
    colour = [k for k in (batch_key, labels_key) if k]
    fig = sc.pl.umap(adata, color=colour or None, show=False, return_fig=True)
    fig.savefig(out / "umap.png", dpi=120, bbox_inches="tight")
    adata.write_h5ad(out / "adata_scvi.h5ad")
    model.save(out / "model", overwrite=True)
    summary = {
        "cells": adata.n_obs,
        "genes": adata.n_vars,
        "epochs": len(model.history),
        "train_seconds": round(train_s, 2),
        "elbo_validation": float(model.history["elbo_validation"].iloc[-1]),
    }
    if labels_key:
        summary["knn_label_accuracy"] = round(knn_label_accuracy(adata.obsm["X_scvi"], adata.obs[labels_key]), 4)
    if batch_key and adata.obs[batch_key].nunique() > 1:
        summary["batch_mixing_entropy"] = round(batch_mixing_entropy(adata.obsm["X_scvi"], adata.obs[batch_key]), 4)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    print(f"Wrote {out / 'adata_scvi.h5ad'}, {out / 'umap.png'} and {out / 'model'}/")
    return summary


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from cellvi.errors import CellviError

    try:
        if args.command == "demo":
            run_demo(args)
        elif args.command == "tune":
            from cellvi.autotune import cli as tune_cli

            return tune_cli.run(args)
    except CellviError as exc:
        print(f"cellvi: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
