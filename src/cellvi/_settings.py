"""Global settings: the random seed, threads, the default progress bar and device, and whether training
keeps the memory it frees (:mod:`cellvi.train.heap`).

``cellvi.settings.seed = 0`` seeds Python, NumPy and PyTorch at once, and every minibatch shuffle and
posterior sample taken afterwards derives from it, so a run with the same seed, data and hardware is
repeatable (on CPU bit for bit; on GPU some kernels are not deterministic, see the README).
"""

from __future__ import annotations

import random

import numpy as np
import torch


class Settings:
    """Process-wide settings of cellvi. Use the instance ``cellvi.settings``."""

    def __init__(self) -> None:
        self._seed: int | None = None
        self.progress_bar: bool = True
        self.device: str | None = None  # None: CUDA when available, else CPU
        # keep the memory that training frees for its next steps (see cellvi.train.heap)
        self.keep_freed_memory: bool = True
        self._logging_dir: str | None = None

    @property
    def logging_dir(self) -> str | None:
        """A folder for training logs, as in scvi-tools (default None: none written). When set, each
        ``train()`` writes its per-epoch history as ``<logging_dir>/<Model>_<time>/history.csv``."""
        return self._logging_dir

    @logging_dir.setter
    def logging_dir(self, value) -> None:
        import os

        from .errors import InvalidTypeError

        if value is not None and not isinstance(value, (str, os.PathLike)):
            raise InvalidTypeError(f"settings.logging_dir must be a folder path or None, not {type(value).__name__}.")
        self._logging_dir = None if value is None else os.fspath(value)

    @property
    def seed(self) -> int | None:
        """The random seed; setting it seeds ``random``, NumPy and PyTorch immediately."""
        return self._seed

    @seed.setter
    def seed(self, value: int | None) -> None:
        self._seed = None if value is None else int(value)
        if value is not None:
            random.seed(self._seed)
            np.random.seed(self._seed)
            torch.manual_seed(self._seed)

    @property
    def num_threads(self) -> int:
        """Number of CPU threads PyTorch uses for its operations."""
        return torch.get_num_threads()

    @num_threads.setter
    def num_threads(self, value: int) -> None:
        torch.set_num_threads(int(value))

    def torch_device(self) -> torch.device:
        """The device models are put on: ``settings.device`` if set, else CUDA when present, else CPU."""
        if self.device is not None:
            return torch.device(self.device)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def new_generator(self, offset: int = 0) -> np.random.Generator:
        """A NumPy generator derived from the seed (fresh entropy when no seed is set)."""
        if self._seed is None:
            return np.random.default_rng()
        return np.random.default_rng([self._seed, offset])


settings = Settings()
