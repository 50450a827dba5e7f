"""Data: the registry that ``setup_anndata`` records, minibatch loaders, and the simulator."""

from .loaders import MinibatchLoader, minibatch_slices, prefetch
from .registry import CellData, Registry
from .simulate import simulate

__all__ = ["CellData", "MinibatchLoader", "Registry", "minibatch_slices", "prefetch", "simulate"]
