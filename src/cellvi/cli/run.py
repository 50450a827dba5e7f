"""``cellvi run`` and ``cellvi demo``: counts in, latent + clusters + markers + trajectory + report out.

Steps (each timed, with the process's peak RSS, in ``summary.json`` and the report): read, highly
variable genes (scanpy ``seurat_v3`` on the counts, on at most ``HVG_CELLS`` random cells), train scVI
on those genes, latent, neighbours + Leiden + PAGA (scanpy), diffusion pseudotime with a root, UMAP,
marker genes (cellvi's one-vs-all Bayesian DE, posterior samples of at most ``--de-cells`` cells per
side), metrics on at most ``METRIC_CELLS`` cells, writing. Every gene is kept in ``result.h5ad``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from . import _distributed_run as dist_run
from ._common import (
    CliError,
    Steps,
    check_obs_key,
    read_input,
)
from ._run_steps import (
    HVG_CELLS,
    METRIC_CELLS,
    calibrate,
    doublet_scores,
    latent_metrics,
    marker_table,
    root_index,
    select_genes,
    versions,
)
from ._scale import (
    PAIRS_ONCE_CELLS,
    analysis_data,
    knn_options,
    lean_igraph,
    paga,
    release_memory,
    training_counts,
    umap_layout,
    write_result,
)

RUN_EXAMPLES = """examples:
  cellvi run pbmc.h5ad -o pbmc_out --batch-key batch --labels-key cell_type
  cellvi run filtered_feature_bc_matrix.h5 -o out --n-top-genes 3000 --resolution 0.8
  cellvi run data.h5ad -o out --batch-key donor --root-group 3 --max-epochs 100 --overwrite
  cellvi run ref.h5ad -o ref_out --labels-key cell_type --scanvi   # reference for cellvi map-query
"""


def add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--out", required=True, help="output folder (must not exist, or pass --overwrite)")
    p.add_argument("--batch-key", help="obs column of batches")
    p.add_argument("--labels-key", help="obs column of cell types (colours, metrics, scIB)")
    p.add_argument("--layer", help="layer holding the raw counts (default: X)")
    p.add_argument("--max-epochs", type=int, help="training epochs (default: cellvi's heuristic)")
    p.add_argument("--n-latent", type=int, default=10, help="latent dimensions (default 10)")
    p.add_argument("--gene-likelihood", choices=["zinb", "nb", "poisson"], default="zinb")
    p.add_argument(
        "--n-top-genes",
        type=int,
        default=2000,
        help="highly variable genes to train on (seurat_v3 on counts; 0 = all genes; default 2000)",
    )
    p.add_argument("--resolution", type=float, default=1.0, help="Leiden resolution (default 1.0)")
    root = p.add_mutually_exclusive_group()
    root.add_argument("--root-group", help="a Leiden cluster (or a --labels-key value) holding the root")
    root.add_argument("--root-cell", help="obs name of the root cell for pseudotime")
    p.add_argument("--scanvi", action="store_true", help="also train SCANVI on --labels-key (saved as model/)")
    p.add_argument(
        "--linear", action="store_true", help="LinearSCVI (linear decoder): the report shows each factor's top genes"
    )
    p.add_argument("--unlabeled-category", default="Unknown", help="label of unlabelled cells for --scanvi")
    p.add_argument(
        "--de-cells", type=int, default=1000, help="cells sampled per side of each marker comparison (default 1000)"
    )
    p.add_argument("--no-scib", action="store_true", help="skip the scIB metrics table (slow on large data)")
    p.add_argument(
        "--doublets",
        action="store_true",
        help="score doublets with SOLO on the scVI model, batch by batch (obs doublet_score, predicted_doublet)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="train data-parallel in N processes started by torchrun (docs/distributed.md; default 1)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def register(sub) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    run = sub.add_parser(
        "run",
        help="the whole analysis of a count matrix, with an HTML report",
        description=__doc__.split("\n\n")[0],
        epilog=RUN_EXAMPLES,
        formatter_class=fmt,
    )
    run.add_argument("input", help=".h5ad, 10x .h5, 10x matrix folder or .zarr of raw counts")
    add_model_options(run)
    run.set_defaults(func=run_command)
    demo = sub.add_parser(
        "demo",
        help="`cellvi run` on a built-in simulated branching dataset",
        description="Simulate a branching trajectory (batches, cell types, true time) "
        "and run the whole analysis on it.",
        formatter_class=fmt,
        epilog="examples:\n  cellvi demo -o demo_output\n"
        "  cellvi demo -o demo_output --n-cells 20000 --max-epochs 100 --overwrite\n",
    )
    demo.add_argument("--n-cells", type=int, default=5000, help="simulated cells (default 5000)")
    demo.add_argument("--n-genes", type=int, default=2000, help="simulated genes (default 2000)")
    add_model_options(demo)
    demo.set_defaults(func=demo_command, batch_key="batch", labels_key="cell_type", root_group=None)


def _start(args) -> tuple[int | None, Path, Steps]:
    """What `run` and `demo` check first. Returns torchrun's exit code in the process that launched
    ``--nproc N`` workers (None in a worker or without --nproc), the output folder and the step timer."""
    if getattr(args, "doublets", False) and getattr(args, "nproc", 1) > 1:  # before torchrun starts anything
        raise CliError("--doublets runs in one process; drop --nproc or --doublets")
    if (rc := dist_run.launch_or_join(args)) is not None:
        return rc, Path(args.out), Steps(quiet=True)
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise CliError(f"{out} already exists; pass --overwrite to replace it")
    return None, out, Steps(quiet=args.no_progress)


def run_command(args) -> int:
    rc, out, steps = _start(args)
    if rc is not None:
        return rc
    with steps.step("read input"):
        adata = read_input(args.input, args.layer)
    run_pipeline(adata, args, out, steps, source=str(args.input))
    return 0


def demo_command(args) -> int:
    from ..data import simulate_trajectory

    rc, out, steps = _start(args)
    if rc is not None:
        return rc
    with steps.step("simulate"):
        adata = simulate_trajectory(n_cells=args.n_cells, n_genes=args.n_genes, n_batches=3, seed=args.seed)
    if args.root_cell is None:
        args.root_cell = str(adata.obs_names[int(np.argmin(adata.obs["time"].to_numpy()))])  # earliest cell
    if args.max_epochs is None:
        args.max_epochs = 100
    run_pipeline(adata, args, out, steps, source="simulate_trajectory (cellvi demo); root = the earliest cell")
    return 0


def _params(args) -> dict:
    keys = [
        "batch_key",
        "labels_key",
        "layer",
        "max_epochs",
        "n_latent",
        "gene_likelihood",
        "n_top_genes",
        "resolution",
        "root_group",
        "root_cell",
        "scanvi",
        "linear",
        "de_cells",
        "doublets",
        "seed",
        "nproc",
    ]
    return {k: getattr(args, k, None) for k in keys}


def run_pipeline(adata, args, out: Path, steps: Steps, source: str) -> dict:
    """The analysis of ``adata`` (counts in X or ``args.layer``); writes everything into ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import scanpy as sc

    import cellvi

    from ..report import build_run_report

    check_obs_key(adata, args.batch_key, "--batch-key")
    check_obs_key(adata, args.labels_key, "--labels-key")
    for name in ("max_epochs", "n_latent", "de_cells"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise CliError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.n_top_genes is not None and args.n_top_genes < 0:
        raise CliError(f"--n-top-genes must be >= 0, got {args.n_top_genes}")
    if args.scanvi and not args.labels_key:
        raise CliError("--scanvi needs --labels-key")
    if getattr(args, "doublets", False) and adata.isbacked:
        raise CliError(
            "--doublets needs the data in memory, and the input was opened backed (files of CELLVI_BACKED_BYTES "
            "or more, default 2 GiB): raise CELLVI_BACKED_BYTES to read it into memory, or drop --doublets"
        )
    t_start = time.perf_counter()
    cellvi.settings.seed = args.seed
    cellvi.settings.progress_bar = not args.no_progress
    with dist_run.staged_dir(out, args.overwrite) as tmp:  # rank 0's under --nproc
        with steps.step("highly variable genes"):
            mask = select_genes(adata, args, steps)
            keys = [args.batch_key, args.labels_key]
            tdata = training_counts(adata, np.flatnonzero(mask), args.layer, keys, tmp)  # backed stays backed
        with steps.step("train scVI"):
            model_class = cellvi.model.LinearSCVI if args.linear else cellvi.model.SCVI
            model_class.setup_anndata(tdata, batch_key=args.batch_key)
            model = model_class(tdata, n_latent=args.n_latent, gene_likelihood=args.gene_likelihood)
            epochs = args.max_epochs or int(min(400, max(1, round(400 * 20000 / tdata.n_obs))))
            # KL warm-up over half the epochs (scvi-tools: 400 epochs, often longer than the training)
            model.train(
                max_epochs=epochs,
                plan_kwargs={"n_epochs_kl_warmup": max(1, min(400, epochs // 2))},
                check_val_every_n_epoch=1,
            )  # the report plots validation per epoch
        with steps.step("latent"):
            z = model.get_latent_representation(tdata)
            ldata = analysis_data(tdata)  # in memory: tdata itself, or its obs when tdata is backed
            ldata.obsm["X_scvi"] = z
            release_memory()  # the training's buffers
        if getattr(args, "doublets", False):
            with steps.step("doublets (SOLO)"):
                calls = doublet_scores(model, tdata, args)
                ldata.obs["doublet_score"] = calls["doublet_score"].to_numpy()
                ldata.obs["predicted_doublet"] = calls["predicted_doublet"].to_numpy()
        scanvi = None
        if args.scanvi:
            with steps.step("train SCANVI"):
                scanvi = cellvi.model.SCANVI.from_scvi_model(model, args.unlabeled_category, labels_key=args.labels_key)
                scanvi.train()
                calibrate(scanvi)
                ldata.obsm["X_scanvi"] = scanvi.get_latent_representation(tdata)
        dist_run.main_rank_only()  # --nproc: the other ranks exit; rank 0 goes on as one process
        # UMAP comes after the graph steps: its compiled code and buffers do not add to their peaks
        with steps.step("neighbours"):
            release_memory()
            sc.pp.neighbors(ldata, use_rep="X_scvi", random_state=args.seed, **knn_options(ldata.n_obs, args.seed))
            release_memory()
        with steps.step("Leiden"):
            with lean_igraph(pairs_once=ldata.n_obs > PAIRS_ONCE_CELLS, array_weights=True):
                sc.tl.leiden(
                    ldata,
                    resolution=args.resolution,
                    flavor="igraph",
                    n_iterations=2,
                    directed=False,
                    random_state=args.seed,
                )
        with steps.step("PAGA"):
            paga_cells = paga(ldata, args.seed)
            release_memory()
        root = None
        if args.root_cell is not None or args.root_group is not None:
            with steps.step("diffusion pseudotime"):
                sc.tl.diffmap(ldata)
                root = root_index(ldata, args)
                ldata.uns["iroot"] = root
                sc.tl.dpt(ldata)
                release_memory()
        with steps.step("UMAP"):
            umap_cells = umap_layout(ldata, args.seed)
            release_memory()
        with steps.step("marker genes"):
            tdata.obs["leiden"] = ldata.obs["leiden"]  # the groups of the DE
            markers = marker_table(model, tdata, args)
        with steps.step("metrics"):
            metrics = latent_metrics(ldata, args)
        with steps.step("write result.h5ad and model"):
            for key in ("X_scvi", "X_scanvi", "X_umap", "X_diffmap"):
                if key in ldata.obsm:
                    adata.obsm[key] = ldata.obsm[key]
            for key in ("leiden", "dpt_pseudotime", "doublet_score", "predicted_doublet"):
                if key in ldata.obs:
                    adata.obs[key] = ldata.obs[key].to_numpy()
            adata.obs["leiden"] = adata.obs["leiden"].astype("category")
            for key in ("neighbors", "umap", "leiden", "paga", "leiden_colors", "iroot", "diffmap_evals"):
                if key in ldata.uns:
                    adata.uns[key] = ldata.uns[key]
            for key in ("connectivities", "distances"):
                adata.obsp[key] = ldata.obsp[key]
            if scanvi is not None:
                adata.obs["scanvi_prediction"] = pd.Categorical(scanvi.predict(tdata))
            (scanvi or model).save(tmp / "model")
            markers.to_csv(tmp / "markers.csv", index=False)
            write_result(adata, tmp / "result.h5ad")
        summary = {
            "source": source,
            "cells": int(adata.n_obs),
            "genes": int(adata.n_vars),
            "genes_trained": int(mask.sum()),
            "backed": bool(adata.isbacked),
            "params": _params(args),
            "epochs": len(model.history),
            "clusters": int(ldata.obs["leiden"].nunique()),
            "metrics": metrics,
            "root_cell": None if root is None else str(ldata.obs_names[root]),
            "versions": versions(),
            "subsamples": {
                "hvg_cells": int(min(HVG_CELLS, adata.n_obs)),
                "metric_cells": int(min(METRIC_CELLS, adata.n_obs)),
                "de_cells_per_side": int(args.de_cells),
                "umap_fit_cells": int(umap_cells),
                "paga_cells": int(paga_cells),
            },
        }
        with steps.step("report"):
            summary["steps"] = steps.rows
            build_run_report(ldata, model, summary, markers, args, counts=tdata).write(tmp / "report.html")
        if tdata is not adata and tdata.isbacked:  # the chunked copy of the chosen genes
            tdata.file.close()
            Path(tdata.filename).unlink()
        summary["total_seconds"] = round(time.perf_counter() - t_start, 2)
        (tmp / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    if not args.no_progress:
        print(f"cellvi: done in {summary['total_seconds']:.0f} s. Report: {out / 'report.html'}")
    else:
        print(f"Report: {out / 'report.html'}")
    return summary
