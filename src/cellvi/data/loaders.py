"""Minibatch loaders: turn a :class:`CellData` into dicts of tensors (see :mod:`cellvi.module.vae`).

Shuffling is reproducible and resumable: the order of epoch ``e`` is a permutation drawn from
``numpy.random.default_rng([seed, e])``, so it depends on the seed and the epoch only.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator

import numpy as np
import torch

from .matrix import gather_csr, gather_rows, row_log_factorial
from .registry import CellData


def minibatch_slices(n: int, batch_size: int) -> list[slice]:
    """Split ``range(n)`` into consecutive minibatches; a trailing minibatch of one cell is merged into
    the one before it, because batch normalisation cannot train on a single cell."""
    bounds = list(range(0, n, batch_size)) + [n]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
        bounds.pop(-2)
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


class MinibatchLoader:
    """Iterate minibatches of the cells ``indices`` of ``data``.

    Parameters
    ----------
    data
        The encoded arrays.
    indices
        Positions of the cells to visit (default: all).
    batch_size
        Cells per minibatch.
    shuffle
        Visit the cells in a new random order each epoch (see :meth:`set_epoch`).
    seed
        Seed of the shuffles.
    device
        Where the tensors are put.
    likelihood_terms
        Also give ``nonzero`` and ``log_factorial``, which only the likelihoods use (training, ELBO):
        latent and expression outputs skip their cost.
    sparse_counts
        Give the counts as ``X_csr`` = (row pointers, column indices, values) instead of a dense ``X``
        (for the latent representation and expression, whose first layer multiplies them directly).
    """

    def __init__(
        self,
        data: CellData,
        indices: np.ndarray | None = None,
        batch_size: int = 128,
        shuffle: bool = False,
        seed: int = 0,
        device: torch.device | str = "cpu",
        likelihood_terms: bool = True,
        sparse_counts: bool = False,
    ) -> None:
        self.data = data
        self.likelihood_terms = likelihood_terms
        self.sparse_counts = sparse_counts
        self.indices = np.arange(data.n_cells) if indices is None else np.asarray(indices, dtype=np.int64)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.epoch = 0
        self.device = torch.device(device)

    def set_epoch(self, epoch: int) -> None:
        """Choose the shuffle of epoch ``epoch``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(minibatch_slices(len(self.indices), self.batch_size))

    def __iter__(self) -> Iterator[dict]:
        order = self.indices
        if self.shuffle:
            order = order[np.random.default_rng([self.seed, self.epoch]).permutation(len(order))]
        for part in minibatch_slices(len(order), self.batch_size):
            rows = order[part]
            if self.shuffle:  # within a random minibatch order is irrelevant; sorted rows read faster
                rows = np.sort(rows)
            yield self.batch(rows)

    def batch(self, rows: np.ndarray) -> dict:
        """The minibatch of the cells at positions ``rows``."""
        d = self.data
        out = {
            "batch": torch.from_numpy(d.batch[rows].astype(np.int64)),
            "labels": torch.from_numpy(d.labels[rows].astype(np.int64)),
        }
        if self.sparse_counts:
            out["X_csr"] = tuple(torch.from_numpy(a) for a in gather_csr(d.X, rows))
        else:
            X, nz_rows, nz_cols, values = gather_rows(d.X, rows)
            out["X"] = torch.from_numpy(X)
            if self.likelihood_terms:
                out["nonzero"] = (torch.from_numpy(nz_rows), torch.from_numpy(nz_cols))
                out["log_factorial"] = torch.from_numpy(row_log_factorial(values, nz_rows, len(rows)))
        if d.cat_covs is not None:
            out["cat_covs"] = torch.from_numpy(d.cat_covs[rows].astype(np.int64))
        if d.cont_covs is not None:
            out["cont_covs"] = torch.from_numpy(d.cont_covs[rows])
        if d.size_factor is not None:
            out["size_factor"] = torch.from_numpy(d.size_factor[rows])
        if self.device.type != "cpu":
            out = {k: _to(v, self.device) for k, v in out.items()}
        return out


def _to(value, device: torch.device):
    if isinstance(value, tuple):
        return tuple(v.to(device, non_blocking=True) for v in value)
    return value.to(device, non_blocking=True)


def prefetch(iterable: Iterable, depth: int = 2) -> Iterator:
    """Produce the items of ``iterable`` in a background thread, ``depth`` ahead of the consumer, so
    that reading and densifying the next minibatch overlaps the training step on the current one."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    error: list[BaseException] = []
    stop = threading.Event()

    def work() -> None:
        try:
            for item in iterable:
                if stop.is_set():
                    return
                q.put(item)
        except BaseException as exc:  # re-raised in the consumer
            error.append(exc)
        finally:
            q.put(done)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                if error:
                    raise error[0]
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # drain so the worker can finish
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.01)
