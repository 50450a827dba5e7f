"""Error types. Every error cellvi raises on bad input is a :class:`CellviError` and also a built-in
exception type (``ValueError``, ``KeyError``, ``TypeError`` or ``OSError``), so both
``except cellvi.errors.CellviError`` and the usual built-in ``except`` clauses work."""

from __future__ import annotations


class CellviError(Exception):
    """Base class of all errors raised by cellvi for bad input or state."""


class InvalidDataError(CellviError, ValueError):
    """The count matrix or a covariate column is not valid (negative, non-integer, NaN, empty...)."""


class MissingKeyError(CellviError, KeyError):
    """A key, layer or column named by the user does not exist."""

    def __str__(self) -> str:  # KeyError quotes its message; print it plainly instead
        return str(self.args[0]) if self.args else ""


class InvalidParameterError(CellviError, ValueError):
    """A hyper-parameter or argument has an invalid value."""


class InvalidTypeError(CellviError, TypeError):
    """An argument has the wrong type."""


class RegistryMismatchError(CellviError, ValueError):
    """New data does not match the data the model was set up with (genes, categories)."""


class ModelFileError(CellviError, OSError):
    """A saved model folder is missing, incomplete, corrupted, unsafe or from an incompatible version."""


class TrainingDivergedError(CellviError, ValueError):
    """The training loss became NaN or infinite."""


class NotSetUpError(CellviError, ValueError):
    """The AnnData was not prepared with ``setup_anndata``."""


class MissingDependencyError(CellviError, ImportError):
    """An optional dependency (a ``cellvi[...]`` extra) is not installed."""
