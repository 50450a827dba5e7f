"""Global settings: the random seed, threads, the default progress bar and device, and whether training
keeps the memory it frees (:mod:`cellvi.train.heap`).

``cellvi.settings.seed = 0`` seeds Python, NumPy and PyTorch at once, and every minibatch shuffle and
posterior sample taken afterwards derives from it, so a run with the same seed, data and hardware is
repeatable (on CPU bit for bit; on GPU some kernels are not deterministic, see the README).
"""

from __future__ import annotations

import logging
import random
import warnings

import numpy as np
import torch

# scvi-tools settings that have nothing to act on in cellvi: accepted (a script setting them runs) with a
# warning that says why they do nothing
IGNORED = {
    "dl_num_workers": "cellvi's loaders read minibatches in the training process, with no worker processes",
    "dl_persistent_workers": "cellvi's loaders use no worker processes",
    "progress_bar_style": "cellvi's progress bars are tqdm's (turn them off with settings.progress_bar = False)",
    "warnings_stacklevel": "cellvi's warnings point at the caller's line",
    "jax_preallocate_gpu_memory": "cellvi does not use JAX",
}


class Settings:
    """Process-wide settings of cellvi. Use the instance ``cellvi.settings``."""

    _names = frozenset(
        {"_seed", "progress_bar", "device", "keep_freed_memory", "_logging_dir", "logging_dir", "seed"}
        | {"num_threads", "batch_size", "_batch_size", "verbosity"}
    )

    def __setattr__(self, name: str, value) -> None:
        if name in IGNORED:
            warnings.warn(
                f"settings.{name} is accepted for scvi-tools scripts and ignored: {IGNORED[name]}.", stacklevel=2
            )
            return
        if name not in self._names:  # a typo would otherwise be stored and silently do nothing
            known = sorted(n for n in self._names if not n.startswith("_"))
            raise AttributeError(f"cellvi.settings has no setting {name!r}. Settings: {known}.")
        object.__setattr__(self, name, value)

    def __init__(self) -> None:
        self._seed: int | None = None
        self._batch_size: int | None = None
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

    @property
    def batch_size(self) -> int | None:
        """Minibatch size of the outputs (latent, expression, likelihoods, ...) when a call does not give
        ``batch_size``; None (default): cellvi's own, 1024 cells. scvi-tools' default is 128; training's
        minibatch is ``train(batch_size=...)`` in both."""
        return self._batch_size

    @batch_size.setter
    def batch_size(self, value: int | None) -> None:
        from .errors import InvalidParameterError

        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InvalidParameterError(f"settings.batch_size must be a positive integer or None, got {value!r}.")
        self._batch_size = value

    @property
    def verbosity(self) -> int:
        """Level of cellvi's log messages (the ``"cellvi"`` logger), as scvi-tools' ``settings.verbosity``:
        a ``logging`` level (``logging.WARNING``) or its name (``"warning"``)."""
        return logging.getLogger("cellvi").getEffectiveLevel()

    @verbosity.setter
    def verbosity(self, value: int | str) -> None:
        from .errors import InvalidParameterError

        level = logging.getLevelName(value.upper()) if isinstance(value, str) else value
        if not isinstance(level, int) or isinstance(level, bool):
            raise InvalidParameterError(f"settings.verbosity must be a logging level or its name, got {value!r}.")
        logging.getLogger("cellvi").setLevel(level)

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
