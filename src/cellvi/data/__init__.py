"""Data: the registry that ``setup_anndata`` records, minibatch loaders, and the simulator."""

try:  # scvi-tools re-exports anndata's readers as scvi.data.read_h5ad etc.; so does cellvi
    from anndata.io import read_csv, read_h5ad, read_loom, read_text
except ImportError:  # anndata < 0.11
    from anndata import read_csv, read_h5ad, read_loom, read_text

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
    "read_csv",
    "read_h5ad",
    "read_loom",
    "read_text",
    "simulate",
    "simulate_grn",
    "simulate_programs",
    "simulate_trajectory",
]
