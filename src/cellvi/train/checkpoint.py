"""Training checkpoints: written atomically, read without unpickling arbitrary objects.

A checkpoint holds the module and optimiser state, the random-number state and the history, so that a
run resumed from it continues exactly as if it had never stopped (on CPU, with the same seed).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import ModelFileError

CHECKPOINT_NAME = "checkpoint.pt"


def save_checkpoint(directory: str | os.PathLike, state: dict) -> Path:
    """Write ``state`` to ``directory/checkpoint.pt`` through a temporary file and an atomic rename, so a
    crash mid-write leaves the previous checkpoint intact."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / CHECKPOINT_NAME
    tmp = directory / (CHECKPOINT_NAME + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def load_checkpoint(directory: str | os.PathLike) -> dict | None:
    """The checkpoint in ``directory``, or None when there is none. Only tensors and plain Python
    containers are accepted (``weights_only=True``): a file with other objects is refused."""
    path = Path(directory) / CHECKPOINT_NAME
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupted, truncated, or holding objects we refuse to unpickle
        raise ModelFileError(
            f"Cannot read checkpoint {path} ({type(exc).__name__}): it is truncated or corrupted, or holds "
            "objects other than tensors, which are refused because unpickling them could run code. "
            "Delete it to start afresh."
        ) from exc
