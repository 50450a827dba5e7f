"""``cellvi embed``, ``cellvi de``, ``cellvi map-query`` and ``cellvi info``: use a saved model on new data.

MODEL_DIR may be a saved model folder or a ``cellvi run`` output folder (its ``model/`` is used). The
input must hold every gene the model was trained on (extra genes are ignored, order does not matter);
``map-query`` also accepts a query with at most half of the reference's genes missing (they are
zero-filled, as scArches does, with a notice).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ._common import (
    CliError,
    check_obs_key,
    model_dir,
    read_input,
    staged_dir,
    staged_file,
    subset_counts,
)

_FMT = argparse.RawDescriptionHelpFormatter
_MODELS = ("SCVI", "SCANVI")


def register(sub) -> None:
    p = sub.add_parser(
        "embed",
        help="latent representation of new cells with a trained model",
        formatter_class=_FMT,
        epilog="example:\n  cellvi embed out/model new.h5ad -o new_latent.h5ad\n",
    )
    _common_args(p)
    p.add_argument("-o", "--out", required=True, help="output .h5ad (input cells with obsm X_scvi)")
    p.set_defaults(func=embed_command)

    p = sub.add_parser(
        "de",
        help="Bayesian differential expression with a trained model",
        formatter_class=_FMT,
        epilog="examples:\n  cellvi de out/model out/result.h5ad --groupby leiden -o markers.csv\n"
        "  cellvi de out/model data.h5ad --groupby cell_type --group1 B --group2 T -o b_vs_t.csv\n",
    )
    _common_args(p)
    p.add_argument("--groupby", required=True, help="obs column of the groups")
    p.add_argument("--group1", help="first group (default: each group in turn, one-vs-all)")
    p.add_argument("--group2", help="second group (default: all other cells)")
    p.add_argument("--mode", choices=["change", "vanilla"], default="change")
    p.add_argument("--n-samples", type=int, default=5000, help="cells sampled per group (default 5000)")
    p.add_argument("-o", "--out", required=True, help="output .csv")
    p.set_defaults(func=de_command)

    p = sub.add_parser(
        "map-query",
        help="map query cells onto a reference model (scArches)",
        formatter_class=_FMT,
        epilog="example:\n  cellvi run ref.h5ad -o ref_out --labels-key cell_type --scanvi\n"
        "  cellvi map-query ref_out query.h5ad -o query_out   # predicted labels from SCANVI\n",
    )
    p.add_argument("reference", metavar="REFERENCE_DIR", help="saved SCVI/SCANVI model or cellvi run output")
    p.add_argument("input", metavar="QUERY", help="query .h5ad, 10x .h5, 10x folder or .zarr of raw counts")
    p.add_argument("--layer", help="layer holding the raw counts (default: X)")
    p.add_argument("--max-epochs", type=int, default=100, help="query training epochs (default 100)")
    p.add_argument(
        "--unknown-threshold",
        type=float,
        help="unknown score above which a cell is marked unknown (default: the threshold fitted on the reference)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("-o", "--out", required=True, help="output folder: result.h5ad, report.html and model/")
    p.set_defaults(func=map_query_command)

    p = sub.add_parser(
        "info",
        help="what a saved model is, what it was trained on, its settings",
        formatter_class=_FMT,
        epilog="example:\n  cellvi info out/model\n",
    )
    p.add_argument("model", metavar="MODEL_DIR")
    p.add_argument("--json", action="store_true", help="print the description as JSON")
    p.set_defaults(func=info_command)


def _common_args(p) -> None:
    p.add_argument("model", metavar="MODEL_DIR", help="saved model folder or cellvi run output folder")
    p.add_argument("input", metavar="INPUT", help=".h5ad, 10x .h5, 10x matrix folder or .zarr of raw counts")
    p.add_argument("--layer", help="layer holding the raw counts (default: X)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")


def _meta(path):
    from ..model._files import read_meta, registry_of

    folder = model_dir(path)
    meta = read_meta(folder)
    if meta["model_class"] not in _MODELS:
        raise CliError(f"{folder} holds a {meta['model_class']} model; the CLI handles {', '.join(_MODELS)}")
    return folder, meta, registry_of(meta, folder)


def _model_genes(adata, registry, source, allow_missing: float = 0.0) -> tuple[np.ndarray, list[str]]:
    """Positions in ``adata`` of the model's genes present there, and the names of the missing ones."""
    pos = adata.var_names.get_indexer(registry.var_names)
    missing = [g for g, i in zip(registry.var_names, pos) if i < 0]
    if len(missing) > allow_missing * len(registry.var_names):
        raise CliError(
            f"the model's genes do not fit {source}: {len(missing)} of its {len(registry.var_names)} "
            f"genes are missing (e.g. {', '.join(missing[:3])})"
        )
    return pos[pos >= 0], missing


def _setup_keys(registry) -> list[str]:
    args = registry.setup_args
    return [
        k
        for k in [
            args.get("batch_key"),
            args.get("labels_key"),
            *args.get("categorical_covariate_keys", []),
            *args.get("continuous_covariate_keys", []),
        ]
        if k
    ]


def _load(args, extra_keys=()):
    import cellvi

    folder, meta, registry = _meta(args.model)
    adata = read_input(args.input, args.layer)
    for key in _setup_keys(registry):
        if key != registry.setup_args.get("labels_key"):
            check_obs_key(adata, key, f"the model's covariate (set up with {key!r})")
    for key, option in extra_keys:
        check_obs_key(adata, key, option)
    pos, _ = _model_genes(adata, registry, args.input)
    labels_key = registry.setup_args.get("labels_key")
    keys = [k for k in _setup_keys(registry) if k in adata.obs]  # a SCANVI labels column may be absent
    tdata = subset_counts(adata, pos, args.layer, [*keys, *(k for k, _ in extra_keys)])
    if meta["model_class"] == "SCANVI" and labels_key not in tdata.obs:
        import pandas as pd

        tdata.obs[labels_key] = pd.Categorical([registry.setup_args["unlabeled_category"]] * tdata.n_obs)
    cellvi.settings.seed = args.seed
    model = getattr(cellvi.model, meta["model_class"]).load(folder, adata=tdata)
    return adata, tdata, model


def embed_command(args) -> int:
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise CliError(f"{out} already exists; pass --overwrite to replace it")
    adata, tdata, model = _load(args)
    adata.obsm["X_scvi"] = model.get_latent_representation(tdata)
    with staged_file(out, args.overwrite) as tmp:
        adata.write_h5ad(tmp)
    print(f"Wrote {out}: {adata.n_obs:,} cells with obsm['X_scvi'] ({adata.obsm['X_scvi'].shape[1]} dimensions).")
    return 0


def de_command(args) -> int:
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise CliError(f"{out} already exists; pass --overwrite to replace it")
    _adata, tdata, model = _load(args, [(args.groupby, "--groupby")])
    groups = set(tdata.obs[args.groupby].astype(str))
    for g in (args.group1, args.group2):
        if g is not None and g not in groups:
            raise CliError(f"group {g!r} is not a value of obs[{args.groupby!r}] (values: {sorted(groups)[:10]})")
    tdata.obs[args.groupby] = tdata.obs[args.groupby].astype(str).astype("category")
    table = model.differential_expression(
        tdata, groupby=args.groupby, group1=args.group1, group2=args.group2, mode=args.mode, n_samples=args.n_samples
    )
    with staged_file(out, args.overwrite) as tmp:
        table.rename_axis("gene").to_csv(tmp)
    print(f"Wrote {out}: {len(table):,} rows.")
    return 0


def map_query_command(args) -> int:
    import cellvi

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise CliError(f"{out} already exists; pass --overwrite to replace it")
    if args.max_epochs < 1:
        raise CliError(f"--max-epochs must be >= 1, got {args.max_epochs}")
    folder, meta, registry = _meta(args.reference)
    query = read_input(args.input, args.layer)
    batch_key = registry.setup_args.get("batch_key")
    check_obs_key(query, batch_key, "the reference's batch key")
    pos, missing = _model_genes(query, registry, args.input, allow_missing=0.5)
    tdata = subset_counts(query, pos, args.layer, [k for k in _setup_keys(registry) if k in query.obs])
    cls = getattr(cellvi.model, meta["model_class"])
    if missing:
        print(
            f"cellvi: {len(missing)} of the reference's {len(registry.var_names)} genes are missing from the "
            "query; they are set to zero.",
            file=sys.stderr,
        )
        tdata = cls.prepare_query_anndata(tdata, str(folder))
    cellvi.settings.seed = args.seed
    cellvi.settings.progress_bar = not args.no_progress
    model = cls.load_query_data(tdata, str(folder))
    model.train(max_epochs=args.max_epochs)
    query.obsm["X_scvi"] = model.get_latent_representation(tdata)
    summary = {"reference": str(folder), "model": meta["model_class"], "query": args.input, "epochs": args.max_epochs}
    if meta["model_class"] == "SCANVI":
        summary.update(_transfer_labels(model, tdata, query, args.unknown_threshold))
    from ..report.query_report import build_query_report

    with staged_dir(out, args.overwrite) as tmp:
        model.save(tmp / "model")
        query.write_h5ad(tmp / "result.h5ad")
        build_query_report(query, summary, args.seed).write(tmp / "report.html")
    what = (
        "latent and predicted labels" if meta["model_class"] == "SCANVI" else "latent (an SCVI reference has no labels)"
    )
    print(f"Wrote {out}/result.h5ad ({query.n_obs:,} query cells: {what}), {out}/report.html and {out}/model/.")
    if "cells marked unknown" in summary:
        print(f"Cells marked unknown: {summary['cells marked unknown']}.")
    return 0


def _transfer_labels(model, tdata, query, threshold: float | None) -> dict:
    """obs columns of the transferred labels: ``predicted_labels`` (always a reference class, as
    scvi-tools), ``prediction_confidence`` (its calibrated probability) and, when the reference was
    calibrated, ``unknown_score``, ``is_unknown`` and ``predicted_labels_or_unknown``. Returns the summary."""
    from ..report.query_report import unknown_counts

    probs = model.predict(tdata, soft=True, keep_observed=False)
    labels = np.asarray(probs.columns)[probs.to_numpy().argmax(1)]
    query.obs["predicted_labels"] = labels
    query.obs["prediction_confidence"] = probs.to_numpy().max(1)
    calibrated = getattr(model, "temperature_", None) is not None
    out = {"confidence": f"temperature {model.temperature_:.3g}" if calibrated else "not calibrated (temperature 1)"}
    detector = getattr(model, "unknown_detector_", None)
    if detector is None:
        print(
            "cellvi: the reference was not calibrated (SCANVI.calibrate()), so no cell is scored as unknown.",
            file=sys.stderr,
        )
        out["unknown cells"] = "not scored: reference not calibrated"
        return out
    threshold = detector["thresholds"][detector["method"]] if threshold is None else threshold
    score = model.unknown_score(tdata)
    query.obs["unknown_score"] = score
    query.obs["is_unknown"] = score > threshold
    query.obs["predicted_labels_or_unknown"] = np.where(score > threshold, "unknown", labels)
    out["unknown score"] = f"{detector['method']}, threshold {threshold:.4g}"
    out["cells marked unknown"] = unknown_counts(score > threshold)
    return out


def info_command(args) -> int:
    folder, meta, registry = _meta(args.model)
    hist = meta.get("history") or []
    last = hist[-1] if hist else {}
    desc = {
        "folder": str(folder),
        "model": meta["model_class"],
        "cellvi_version": meta["cellvi_version"],
        "trained": meta.get("is_trained"),
        "epochs": len(hist),
        "final_elbo_train": last.get("elbo_train"),
        "final_elbo_validation": last.get("elbo_validation"),
        "genes": len(registry.var_names),
        "cells_trained_on": registry.summary.get("n_cells"),
        "setup": registry.setup_args,
        "batches": registry.categories.get("batch"),
        "labels": registry.categories.get("labels"),
        "settings": meta["init_params"],
    }
    if args.json:
        print(json.dumps(desc, indent=1, default=str))
        return 0
    width = max(map(len, desc))
    for key, value in desc.items():
        if isinstance(value, list) and len(value) > 12:
            value = value[:12] + [f"... ({len(value)} in all)"]
        print(f"{key:<{width}}  {value}")
    return 0
