"""``cellvi tune INPUT -o OUTDIR --n-trials N --n-jobs J [--storage URL]``: hyper-parameter search
(:func:`cellvi.autotune.tune`) from the command line. Writes best_config.json, trials.csv, the plots and
the trained model (best_model/) to OUTDIR."""

from __future__ import annotations

import argparse
import json
import sys

EXAMPLES = """examples:
  cellvi tune data.h5ad -o tuning --batch-key batch --n-trials 20 --n-jobs 2 --max-epochs 100
  cellvi tune data.h5ad -o tuning --batch-key batch --label-key cell_type --objective both --n-trials 12
  cellvi tune data.h5ad -o tuning --space space.json --model LinearSCVI --pruner asha
  cellvi tune data.h5ad -o tuning_b --storage postgresql://user@dbhost:5432/optuna --study-name pbmc

The same --storage URL and --study-name on several machines join one study. Writes best_config.json,
trials.csv, pareto.csv (--objective both), objective_vs_params.png, param_importances.png and best_model/.
"""


def register(subparsers) -> None:
    """Add the ``tune`` subcommand to an argparse ``subparsers``."""
    p = subparsers.add_parser(
        "tune",
        help="search hyper-parameters with Optuna (docs/autotune.md)",
        description="Hyper-parameter search of an SCVI or LinearSCVI on raw counts, with Optuna.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", help="an .h5ad of raw counts")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.set_defaults(func=run)
    p.add_argument("--n-trials", type=int, default=20)
    p.add_argument("--n-jobs", type=int, default=1, help="parallel processes on this machine")
    p.add_argument("--storage", help="Optuna storage: journal file path, sqlite:///PATH or postgresql://...")
    p.add_argument("--study-name", default="cellvi-tune")
    p.add_argument("--objective", choices=["elbo", "scib", "both"], default="elbo")
    p.add_argument("--batch-key", help="adata.obs column of batches")
    p.add_argument("--label-key", help="adata.obs column of cell types (for the scIB objective)")
    p.add_argument("--layer", help="layer with raw counts (default: X)")
    p.add_argument("--model", choices=["SCVI", "LinearSCVI"], default="SCVI")
    p.add_argument("--max-epochs", type=int, default=100, help="epochs per trial")
    p.add_argument("--pruner", choices=["median", "asha", "none"], default="median")
    p.add_argument("--space", help="a JSON file with the search space (default: the built-in space)")
    p.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    """Run ``cellvi tune``; returns the exit status (CellviErrors are reported by the caller)."""
    from pathlib import Path

    from ..errors import InvalidDataError
    from .tuner import tune

    space = None
    if args.space:
        try:
            space = json.loads(Path(args.space).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InvalidDataError(f"Cannot read the search space {args.space}: {exc}") from exc
    if not Path(args.input).is_file():
        raise InvalidDataError(f"{args.input} does not exist.")
    result = tune(
        args.input,
        space,
        objective=args.objective,
        n_trials=args.n_trials,
        n_jobs=args.n_jobs,
        storage=args.storage,
        study_name=args.study_name,
        model=args.model,
        max_epochs=args.max_epochs,
        batch_key=args.batch_key,
        label_key=args.label_key,
        setup_kwargs={"layer": args.layer} if args.layer else None,
        pruner=None if args.pruner == "none" else args.pruner,
        seed=args.seed,
        output_dir=args.out,
    )
    print(
        json.dumps(
            {
                "best_params": result.best_params,
                "best_values": result.best_values,
                "search_s": round(result.search_s, 1),
                "out": args.out,
            },
            indent=1,
            default=str,
        )
    )
    sys.stdout.flush()
    return 0
