"""``cellvi run/demo --nproc N``: the same command in N processes started by torchrun, data-parallel.

The command the user typed starts ``python -m torch.distributed.run --standalone --nproc-per-node N``
(:func:`cellvi.train.distributed.launch`; cellvi has no scheduler of its own) on this module, which runs
the same command line in each process (``torchrun ... -m cellvi.cli._distributed_run run DATA -o OUT``
is the same, for several nodes). Every rank reads the input and selects the genes (the same
deterministic steps), then the ranks train together (DistributedDataParallel, ``batch_size`` global) and
compute the latent representation together (each a range of the cells, gathered in cell order). Then
rank 0 alone runs the rest (neighbours, UMAP, Leiden, markers, report, writing the outputs) as one
process, and the other ranks leave. Only rank 0 writes into the output folder, staged as on one process.

Errors: a process that meets a user error (a :class:`cellvi.errors.CellviError`) writes its first line
to a status folder and exits 0, so that torchrun adds no failure report of its own; the launching
process then prints that one line and exits 2, as ``cellvi run`` does on one process.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

from ._common import CliError, check_new_path
from ._common import staged_dir as _staged_dir

STATUS_ENV = "CELLVI_RUN_STATUS_DIR"  # set by the launching process: where ranks report user errors
ARGV_ENV = "CELLVI_RUN_ARGV"  # the command line (JSON): torchrun's own parser would take `--nproc` as its own
_MAIN_ONLY = contextlib.ExitStack()  # rank 0 stays in distributed.local() once the other ranks left


def torchrun_rank() -> int | None:
    """This process's rank when torchrun started several (``WORLD_SIZE`` > 1), else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ:
        return int(os.environ["RANK"])
    return None


def launch_or_join(args) -> int | None:
    """Called first by ``cellvi run``/``demo``. With ``--nproc N`` > 1 outside torchrun: start the N
    processes, wait for them and return the exit status. Inside torchrun: quiet the ranks other than 0
    and return None (this process runs the command). Otherwise None."""
    nproc = getattr(args, "nproc", 1)
    if nproc is None or nproc < 1:
        raise CliError(f"--nproc must be >= 1, got {nproc}")
    rank = torchrun_rank()
    if rank is not None:
        if rank != 0:
            args.no_progress = True  # one progress log: rank 0's
        return None
    if nproc == 1:
        return None
    check_new_path(Path(args.out), args.overwrite)  # before starting processes, with the same message
    from ..train.distributed import launch

    with tempfile.TemporaryDirectory(prefix="cellvi-run-") as status:
        threads = str(max(1, (os.cpu_count() or 1) // nproc))
        env = {
            STATUS_ENV: status,
            ARGV_ENV: json.dumps(getattr(args, "argv", sys.argv[1:])),  # main() records the command line
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", threads),
        }
        rc = launch(["-m", __name__], nproc, env=env)
        errors = sorted(Path(status).glob("error_*"), key=lambda p: int(p.name.split("_")[1]))
        if errors:
            raise CliError(errors[0].read_text())
    if rc != 0:
        print(
            f"cellvi: error: a process of the {nproc}-process run failed (torchrun exit status {rc})", file=sys.stderr
        )
    return rc


@contextlib.contextmanager
def staged_dir(out: Path, overwrite: bool):
    """:func:`cellvi.cli._common.staged_dir` on rank 0 (and on one process); on the other ranks a
    private temporary folder: they never touch the output folder."""
    rank = torchrun_rank()
    if rank is None or rank == 0:
        with _staged_dir(out, overwrite) as tmp:
            yield tmp
    else:
        with tempfile.TemporaryDirectory(prefix="cellvi-rank-") as tmp:
            yield Path(tmp)


def main_rank_only() -> None:
    """Under torchrun, after the collective steps (training, latent): the ranks other than 0 leave the
    process group and exit 0; rank 0 goes on as one process (no more collective calls)."""
    if torchrun_rank() is None:
        return
    import torch.distributed as dist

    from ..train import distributed

    if distributed.world().main:
        _MAIN_ONLY.enter_context(distributed.local())
        return
    if dist.is_initialized():
        dist.destroy_process_group()
    raise SystemExit(0)  # through the staged folder (removed) and the command: a clean exit


def _child(argv: list[str]) -> int:
    """One rank under torchrun: the command of ``argv``; a user error goes to the status folder."""
    from ..errors import CellviError
    from . import _parser, error_line, run_parsed

    args = _parser().parse_args(argv)
    args.argv = argv
    try:
        return run_parsed(args)
    except CellviError as exc:
        first = error_line(exc)
        status = os.environ.get(STATUS_ENV)
        if status is None:  # started by torchrun directly: report as the command line does
            print(f"cellvi: error: {first}", file=sys.stderr)
            return 2
        (Path(status) / f"error_{torchrun_rank() or 0}").write_text(first)
        return 0
    finally:
        _MAIN_ONLY.close()


if __name__ == "__main__":  # the module proper (not this __main__ copy) holds the state run.py uses
    from cellvi.cli._distributed_run import _child as child

    sys.exit(child(json.loads(os.environ[ARGV_ENV]) if ARGV_ENV in os.environ else sys.argv[1:]))
