"""Data: the registry that ``setup_anndata`` records, minibatch loaders, and the simulator."""

from .loaders import MinibatchLoader, minibatch_slices, prefetch
from .ondisk import OnDiskLoader, open_zarr
from .registry import CellData, Registry
from .programs import simulate_programs
from .simulate import simulate

__all__ = [
    "CellData", "MinibatchLoader", "OnDiskLoader", "Registry", "minibatch_slices", "open_zarr", "prefetch", "simulate",
    "simulate_programs",
]
