"""User-facing models with the AnnData API (scvi-tools call pattern)."""

from .base import BaseModel
from .linear_scvi import LinearSCVI
from .scanvi import SCANVI
from .scvi import SCVI

__all__ = ["BaseModel", "LinearSCVI", "SCANVI", "SCVI"]
