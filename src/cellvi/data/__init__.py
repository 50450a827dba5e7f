"""Data: the registry that ``setup_anndata`` records, minibatch loaders, and the simulator."""

from .genes import poisson_gene_selection
from .loaders import MinibatchLoader, minibatch_slices, prefetch
from .ondisk import OnDiskLoader, open_zarr
from .programs import simulate_programs
from .registry import CellData, Registry
from .simulate import simulate
from .simulate_grn import simulate_grn
from .trajectory import simulate_trajectory

__all__ = [
    "CellData",
    "MinibatchLoader",
    "OnDiskLoader",
    "Registry",
    "minibatch_slices",
    "open_zarr",
    "poisson_gene_selection",
    "prefetch",
    "simulate",
    "simulate_grn",
    "simulate_programs",
    "simulate_trajectory",
]
