"""scvi-tools' ``scvi.external`` models that cellvi offers, at the same place: ``SOLO`` (doublets)."""

from ..model.solo import SOLO

__all__ = ["SOLO"]
