"""The ``cellvi`` command line: ``run``, ``demo``, ``embed``, ``de``, ``map-query`` and ``info``.

Each command lives in its own module exposing ``register(subparsers)``; a user's mistake (a
:class:`cellvi.errors.CellviError`) ends with one line on stderr and exit code 2, never a traceback.
See docs/cli.md.
"""

from __future__ import annotations

import argparse
import sys
import warnings

EXAMPLES = """examples:
  cellvi demo -o demo_output                      # simulated branching data, whole analysis + report
  cellvi run data.h5ad -o out --batch-key batch --labels-key cell_type
  cellvi embed out/model new_cells.h5ad -o new_latent.h5ad
  cellvi de out/model data.h5ad --groupby leiden --group1 0 --group2 1 -o de.csv
  cellvi map-query ref_out/model query.h5ad -o query_out
  cellvi info out/model
  cellvi grn out/result.h5ad --cluster-key leiden --perturb GATA1=0 -o grn_out
  cellvi tune data.h5ad -o tuning --n-trials 20 --n-jobs 2

Run `cellvi COMMAND --help` for the options of a command.
"""


def _parser() -> argparse.ArgumentParser:
    from . import run, tools

    parser = argparse.ArgumentParser(
        prog="cellvi",
        description="scVI analysis of single-cell RNA-seq counts from the command line.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run.register(sub)
    tools.register(sub)
    from ..analysis.grn import cli as grn_cli
    from ..autotune import cli as tune_cli

    grn_cli.register(sub)
    tune_cli.register(sub)
    return parser


def run_parsed(args: argparse.Namespace) -> int:
    """Run the parsed command; its exit status. A user's mistake raises CellviError (see :func:`error_line`)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        return int(args.func(args) or 0)


def error_line(exc: BaseException) -> str:
    """The one line a user's mistake is reported as: the first line of its message."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # `run --nproc N` runs it again under torchrun
    from ..errors import CellviError

    try:
        return run_parsed(args)
    except CellviError as exc:
        print(f"cellvi: error: {error_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cellvi: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
