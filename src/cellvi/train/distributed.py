"""Data-parallel training and inference over processes with ``torch.distributed`` (launched by torchrun).

A script written for one process runs unchanged under ``torchrun --nproc-per-node N script.py`` (and
across nodes with ``--nnodes`` and a rendezvous endpoint): torchrun starts the processes and sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address; cellvi has no scheduler of its own.
This module is all of cellvi's distributed plumbing; the trainer and the models call its small hooks,
each of which does nothing in a single process:

- :func:`setup` joins the process group when a model is built: gloo on CPU; on CUDA, nccl for CUDA
  tensors (and gloo for the few CPU ones), each process on GPU ``LOCAL_RANK``.
- :func:`wrap_loss` wraps the module in ``DistributedDataParallel`` (rank 0's weights are broadcast to
  all ranks at construction; gradients are averaged in the backward pass).
- :func:`sum_over_ranks`, :func:`any_rank`, :func:`broadcast_int`, :func:`sync_buffers`: the epoch's
  metric sums, stop decisions, the shuffle seed and batch-norm statistics agree on every rank.
- :func:`on_main`: checkpoints and saved models are written by rank 0 while the others wait.
- :func:`my_cells`, :func:`gather_rows`, :func:`rows_to_main`: inference splits the cells into one
  contiguous range per rank and returns the result in the original cell order on every rank
  (:func:`gather_rows`) or streams it to rank 0, which writes it (:func:`rows_to_main`).
- :func:`launch`: start N processes with torchrun for users who do not call it themselves.

``batch_size`` is the *global* minibatch: each step, every rank trains on its ``1/N`` share of the
``batch_size`` cells one process would have used (:mod:`cellvi.data.loaders`), the gradients are
averaged, so a step is the same step as on one process and the learning rate needs no change.
The compiled step (:mod:`cellvi.train.compiled`) compiles the DDP-wrapped loss (torch.compile traces
DDP's forward), and the fused Adam step (:mod:`cellvi.train.optim`) updates from the averaged
gradients: both work unchanged under DDP.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from ..data.loaders import share

_LOCAL = [False]  # inside local(): behave as one process
SEND_BUDGET = 256 * 2**20  # bytes of result blocks a rank may have in flight to rank 0


@dataclass(frozen=True)
class World:
    """This process's place: ``rank`` of ``size`` processes, ``local_rank`` on its node."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def world() -> World:
    """Where this process stands (one process unless a process group of several is initialised)."""
    if _LOCAL[0] or not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def setup(device: torch.device | None = None) -> World:
    """Join the process group that torchrun's environment describes (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``/``MASTER_PORT``), once per process; nothing outside torchrun or with one process.
    ``device``: the models' device; on CUDA this process then uses GPU ``LOCAL_RANK``."""
    if _LOCAL[0] or (dist.is_available() and dist.is_initialized()):
        return world()
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1 or "RANK" not in os.environ or not dist.is_available():
        return World()
    cuda = device is not None and torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    timeout = timedelta(seconds=int(os.environ.get("CELLVI_DIST_TIMEOUT_S", "1800")))
    backend = "cpu:gloo,cuda:nccl" if cuda else "gloo"
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        # torchrun's store outlives a restart of the workers, and the process group's keys (each rank's
        # address) are not told apart by attempt: restarted workers read the dead ones' addresses and
        # fail to connect (measured with torch 2.13, --standalone). Keys of their own per attempt:
        store = dist.TCPStore(
            os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), size, is_master=False, timeout=timeout
        )
        store = dist.PrefixStore(f"cellvi/attempt_{restart_count()}", store)
        dist.init_process_group(backend, store=store, rank=int(os.environ["RANK"]), world_size=size, timeout=timeout)
    else:
        dist.init_process_group(backend, timeout=timeout)
    return world()


def restart_count() -> int:
    """How many times torchrun has restarted this job's workers (``--max-restarts``)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


@contextlib.contextmanager
def local():
    """Within this block, cellvi acts as one process (no collective calls): for code that only some
    ranks run, such as ``if rank == 0: model.get_latent_representation()``."""
    old, _LOCAL[0] = _LOCAL[0], True
    try:
        yield
    finally:
        _LOCAL[0] = old


# ---------------------------------------------------------------------- small collectives
def _comm_device() -> torch.device:
    """Where collective tensors go: CPU (gloo) unless the group has only nccl."""
    return torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")


def broadcast_int(value: int) -> int:
    """Rank 0's ``value`` on every rank."""
    if not world().active:
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.int64, device=_comm_device())
    dist.broadcast(t, 0)
    return int(t.item())


def sum_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``values`` over ranks (one all-reduce), on ``values``' device."""
    if not world().active:
        return values
    t = values.to(_comm_device())
    dist.all_reduce(t)
    return t.to(values.device)


def sum_array(values: np.ndarray) -> np.ndarray:
    """The element-wise sum over ranks of a float64 array."""
    return sum_over_ranks(torch.from_numpy(np.asarray(values, dtype=np.float64))).numpy()


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is True on at least one."""
    if not world().active:
        return bool(flag)
    return bool(sum_over_ranks(torch.tensor([float(bool(flag))])).item() > 0)


def barrier() -> None:
    if world().active:
        dist.barrier()


def sync_buffers(module: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (batch-norm running statistics, which each rank updates from
    its own cells during a training step), so that evaluation and the saved model agree."""
    if not world().active:
        return
    for buf in module.buffers():
        t = buf.data.to(_comm_device())
        dist.broadcast(t, 0)
        buf.data.copy_(t)


def on_main(fn: Callable[[], object]):
    """Run ``fn`` on rank 0 only, the other ranks waiting; returns its result on rank 0 (None on the
    others). An error on rank 0 is raised there and reported as an error on the other ranks."""
    w = world()
    if not w.active:
        return fn()
    result, error = None, None
    if w.main:
        try:
            result = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised below, after telling the other ranks
            error = exc
    if broadcast_int(error is not None):
        if error is not None:
            raise error
        raise RuntimeError("Rank 0 failed to write (see its error); this rank stops too.")
    return result


# ---------------------------------------------------------------------- training
def seed_ranks() -> None:
    """Give each rank its own torch random stream (dropout, posterior draws), derived from rank 0's
    state: ranks started with the same seed would otherwise draw the same noise for different cells."""
    w = world()
    if w.active:
        torch.manual_seed(broadcast_int(int(torch.randint(0, 2**62, ()))) + w.rank)


class _LossForward(torch.nn.Module):
    """The module with its loss as ``forward``: DistributedDataParallel hooks only ``forward``."""

    def __init__(self, module: torch.nn.Module, loss_fn: Callable) -> None:
        super().__init__()
        self.module = module
        self.loss_fn = loss_fn

    def forward(self, batch: dict, **kwargs) -> dict:
        return self.loss_fn(batch, **kwargs)


def wrap_loss(module: torch.nn.Module, loss_fn: Callable) -> Callable:
    """``loss_fn`` (which computes ``module``'s loss), through DistributedDataParallel under torchrun:
    rank 0's weights and buffers are copied to all ranks now, the gradients are averaged over ranks in
    each backward pass. ``static_graph``: parameters that a loss never uses (for example SCANVI's
    classifier at ``classification_ratio=0``) are found on the first step, at no cost per step."""
    if not world().active:
        return loss_fn
    from torch.nn.parallel import DistributedDataParallel

    param = next(module.parameters())
    ids = (
        [param.device.index if param.device.index is not None else torch.cuda.current_device()]
        if param.device.type == "cuda"
        else None
    )
    return DistributedDataParallel(_LossForward(module, loss_fn), device_ids=ids, static_graph=True)


# ---------------------------------------------------------------------- inference
def my_cells(positions: np.ndarray) -> np.ndarray | None:
    """This rank's contiguous share of ``positions`` (cells in the asked order), or None in one process."""
    w = world()
    if not w.active:
        return None
    return np.asarray(positions)[share(len(positions), w.rank, w.size)]


def gather_rows(local_rows: np.ndarray, axis: int = 0) -> np.ndarray:
    """The ranks' results (each its :func:`my_cells` along ``axis``) concatenated in rank order, so
    in the original cell order, on every rank."""
    w = world()
    if not w.active:
        return local_rows
    moved = np.moveaxis(np.ascontiguousarray(local_rows), axis, 0)
    counts = [int(c) for c in sum_over_ranks(torch.tensor([len(moved) if r == w.rank else 0 for r in range(w.size)]))]
    device = _comm_device()
    padded = torch.zeros((max(counts), *moved.shape[1:]), dtype=torch.from_numpy(moved[:0]).dtype, device=device)
    padded[: len(moved)] = torch.from_numpy(moved).to(device)
    parts = [torch.empty_like(padded) for _ in range(w.size)]
    dist.all_gather(parts, padded)
    whole = np.concatenate([p[:c].cpu().numpy() for p, c in zip(parts, counts)])
    return np.moveaxis(whole, 0, axis)


def rows_to_main(blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """Stream 2-D row blocks to rank 0: there, yields its own blocks then each other rank's in rank
    order (the original cell order when each rank computed its :func:`my_cells`); on the other ranks,
    sends its blocks (at most :data:`SEND_BUDGET` bytes in flight) and yields nothing."""
    w = world()
    if not w.active:
        yield from blocks
        return
    device = _comm_device()
    if not w.main:
        pending: list = []
        for block in blocks:
            data = torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32)).to(device)
            head = torch.tensor(data.shape, dtype=torch.int64, device=device)
            pending.append((data, [dist.isend(head, 0), dist.isend(data, 0)]))
            while sum(d.numel() * 4 for d, _ in pending) > SEND_BUDGET:
                for work in pending.pop(0)[1]:
                    work.wait()
        dist.send(torch.tensor([-1, -1], dtype=torch.int64, device=device), 0)
        for _, works in pending:
            for work in works:
                work.wait()
        return
    yield from blocks
    for src in range(1, w.size):
        while True:
            head = torch.empty(2, dtype=torch.int64, device=device)
            dist.recv(head, src)
            if int(head[0]) < 0:
                break
            data = torch.empty(tuple(head.tolist()), dtype=torch.float32, device=device)
            dist.recv(data, src)
            yield data.cpu().numpy()


# ---------------------------------------------------------------------- launching
def launch(
    command: list[str],
    nproc: int,
    max_restarts: int = 0,
    torchrun_args: Iterable[str] = (),
    env: dict[str, str] | None = None,
) -> int:
    """Run ``command`` (a script and its arguments, ``["train.py", "--epochs", "10"]``, or
    ``["-m", "package.module", ...]``) in ``nproc`` processes on this machine with torchrun
    (``python -m torch.distributed.run --standalone``), as ``torchrun --nproc-per-node nproc`` would;
    ``max_restarts`` restarts failed workers (resuming from ``checkpoint_dir``); ``env``: environment
    variables added for the processes. Returns torchrun's exit status. Several nodes: call torchrun
    directly (see docs/distributed.md)."""
    if int(nproc) < 1:
        from ..errors import InvalidParameterError

        raise InvalidParameterError(f"nproc must be >= 1, got {nproc!r}.")
    command = list(command)
    target = ["--module", *command[1:]] if command[:1] == ["-m"] else command
    args = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(int(nproc)),
        "--max-restarts",
        str(int(max_restarts)),
        *torchrun_args,
        *target,
    ]
    return subprocess.call(args, env={**os.environ, **env} if env else None)
