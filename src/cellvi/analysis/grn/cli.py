"""``cellvi grn``: per-cluster GRNs and one perturbation from the command line.

    cellvi grn adata.h5ad --cluster-key leiden --embedding-key X_umap --tfs tfs.txt \\
        --perturb GATA1=0 --pseudotime-key dpt_pseudotime --out grn_output [--model model_dir]

Writes ``links.csv`` (filtered edges), ``network_scores.csv``, ``shift.png``, ``score.png`` (with pseudotime),
``scores_by_cluster.csv``, ``grn_section.html`` (the report section) and ``summary.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["register", "run"]


def register(subparsers) -> None:
    """Add the ``grn`` subcommand to an argparse ``subparsers``."""
    p = subparsers.add_parser("grn", help="per-cluster gene regulatory networks and in-silico perturbation")
    p.add_argument("input", nargs="?", metavar="INPUT", help=".h5ad with counts (or expression with --as-given)")
    p.add_argument("--data", help="the same as INPUT (the earlier spelling, still accepted)")
    p.add_argument("--cluster-key", required=True)
    p.add_argument("--embedding-key", default="X_umap")
    p.add_argument("--model", help="folder of a trained SCVI: use its denoised expression")
    p.add_argument("--layer", help="layer of counts (default X)")
    p.add_argument("--as-given", action="store_true", help="take X as expression (no normalisation)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--tfs", help="text file, one TF name a line")
    src.add_argument("--base-grn", help="CellOracle-layout base GRN (parquet or CSV)")
    p.add_argument("--perturb", action="append", default=[], help="GENE=VALUE (0 = knockout); repeatable")
    p.add_argument("--pseudotime-key", help="obs column of pseudotime for the perturbation score")
    p.add_argument("--batch-key", help="obs column of batches: their offsets are removed before fitting")
    p.add_argument(
        "--chunked",
        action="store_true",
        help="open INPUT backed and compute the expression a block of cells at a time (large data)",
    )
    p.add_argument("--alpha", type=float, default=10.0)
    p.add_argument("--bootstraps", type=int, default=20)
    p.add_argument("--p", type=float, default=0.001)
    p.add_argument("--top-k", type=int, default=2000)
    p.add_argument(
        "--transform",
        choices=["none", "normal_scores"],
        default="none",
        help="regress each cluster's expression (none) or its per-gene normal scores (a Gaussian copula)",
    )
    p.add_argument("--n-propagation", type=int, default=3)
    p.add_argument("--n-neighbors", type=int, default=30)
    p.add_argument(
        "--report", help="report.html of a `cellvi run` to add the GRN section to (also written to OUT/report.html)"
    )
    p.add_argument("-o", "--out", default="grn_output", help="output folder (default: grn_output)")
    p.set_defaults(func=run)


def _perturbation(items) -> dict:
    from ...errors import InvalidParameterError

    out = {}
    for item in items:
        gene, sep, value = item.partition("=")
        try:
            out[gene] = float(value)
        except ValueError:
            sep = ""
        if not sep or not gene:
            raise InvalidParameterError(f"--perturb takes GENE=VALUE, got {item!r}.")
    return out


def run(args) -> int:
    """Run ``cellvi grn`` (parsed ``args``); returns the exit status. Raises CellviError on bad input."""
    import anndata
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ...errors import InvalidParameterError
    from . import Oracle, grn_report_section, plot_score, plot_shift

    if args.input and args.data and args.input != args.data:
        raise InvalidParameterError(f"two inputs given: INPUT {args.input!r} and --data {args.data!r}; give one.")
    if not (args.input or args.data):
        raise InvalidParameterError("no input: give the .h5ad file as INPUT (cellvi grn data.h5ad ...).")
    path = Path(args.input or args.data)
    if not path.is_file():
        raise InvalidParameterError(f"no such file: {path}")
    adata = anndata.read_h5ad(path, backed="r" if args.chunked else None)
    model = None
    if args.model:
        from ...model import SCVI

        model = SCVI.load(args.model, adata=adata)
    tfs = None
    if args.tfs:
        tfs = [t.strip() for t in Path(args.tfs).read_text().splitlines() if t.strip()]
    oracle = Oracle(
        adata,
        args.cluster_key,
        args.embedding_key,
        model=model,
        layer=args.layer,
        tfs=tfs,
        base_grn=args.base_grn,
        pseudotime_key=args.pseudotime_key,
        batch_key=args.batch_key,
        log1p=not args.as_given,
        n_neighbors=args.n_neighbors,
    )
    perturb = _perturbation(args.perturb)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    links = oracle.fit_grn(
        alpha=args.alpha, n_bootstraps=args.bootstraps, p=args.p, top_k=args.top_k, transform=args.transform
    )
    links.to_csv(out / "links.csv", index=False)
    import pandas as pd

    scores = [oracle.network_scores(cl).assign(cluster=cl) for cl in oracle.links_all]
    pd.concat(scores).to_csv(out / "network_scores.csv")
    summary = {
        "cells": adata.n_obs,
        "genes": adata.n_vars,
        "edges": len(links),
        "expression": oracle.expression_source,
        "regulators": oracle.regulators.source,
        "transform": args.transform,
        "timings_s": oracle.timings,
    }
    result = None
    if perturb:
        result = oracle.simulate_shift(perturb, n_propagation=args.n_propagation)
        if model is not None:
            agree = oracle.scvi_shift(result)["agreement"]
            summary["scvi_agreement"] = {k: agree[k] for k in ("median_cosine", "fraction_agree", "n_moving")}
        plot_shift(result, oracle.embedding).savefig(out / "shift.png", dpi=120, bbox_inches="tight")
        if result.score is not None:
            plot_score(result, oracle.embedding).savefig(out / "score.png", dpi=120, bbox_inches="tight")
            result.score_by_cluster().to_csv(out / "scores_by_cluster.csv")
        plt.close("all")
        summary["perturbation"] = {"genes": perturb, "timings_s": result.timings}
    title, body = grn_report_section(oracle, result)
    (out / "grn_section.html").write_text(f"<h2>{title}</h2>\n{body}\n")
    _write_reports(out, title, body, args.report)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(json.dumps(summary, indent=1, default=str))
    return 0


def _write_reports(out, title: str, body: str, run_report) -> None:
    """OUT/report.html (the GRN section alone, self-contained) and, with ``--report``, the section added
    at the end of a `cellvi run` report (which cellvi.report wrote: one <main>, one <nav>)."""
    import html
    from pathlib import Path

    from ...errors import InvalidDataError
    from ...report import Report

    report = Report("cellvi grn report", "gene regulatory networks and in-silico perturbation")
    report.add(title, body)
    report.write(out / "report.html")
    if run_report is None:
        return
    path = Path(run_report)
    page = path.read_text(encoding="utf-8") if path.is_file() else ""
    if page.count("</main>") != 1 or page.count("</nav>") != 1:
        raise InvalidDataError(f"--report {path} is not a report written by `cellvi run`.")
    link = f'<a href="#grn">{html.escape(title)}</a></nav>'
    section = f'<section id="grn"><h2>{html.escape(title)}</h2>{body}</section></main>'
    path.write_text(page.replace("</nav>", link).replace("</main>", section), encoding="utf-8")
