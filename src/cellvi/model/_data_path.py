"""How training minibatches travel to the model: dense, as CSR pieces densified on the device, or as
non-zeros all the way into the encoder's first layer (docs/performance.md, "The training data path")."""

from __future__ import annotations

from numbers import Integral

import torch

from ..errors import InvalidParameterError

# The sparse first layer is the default on wide, sparse data (bench/results/wide_data.md): it was
# faster at 20,000 genes and 3% non-zeros, slower at 15,073 genes and 42% non-zeros.
SPARSE_FIRST_LAYER_MIN_GENES = 5_000
SPARSE_FIRST_LAYER_MAX_DENSITY = 0.1
READ_AHEAD_GPU = 2  # minibatches prepared ahead while the device trains


def nonzero_fraction(X) -> float | None:
    """The fraction of stored entries of a sparse matrix (None when it does not say: dense or on disk)."""
    nnz = getattr(X, "nnz", None)
    n_entries = X.shape[0] * X.shape[1]
    return None if not isinstance(nnz, Integral) or n_entries == 0 else int(nnz) / n_entries


def training_data_path(device: torch.device, X, sparse_first_layer: bool | None) -> dict:
    """Loader options (see :class:`~cellvi.data.MinibatchLoader`) for training on ``device`` with the
    counts ``X`` (n_cells, n_genes).

    ``sparse_first_layer``: the encoders read the minibatch's non-zeros (``sparse_counts``); None turns it
    on for wide, sparse matrices (at least 5,000 genes, at most 10% non-zeros). Otherwise, on CUDA,
    the counts are sent as CSR pieces and densified on the device (``csr_transfer``). On CUDA the next
    minibatches are prepared in a background thread while the device trains (``read_ahead``); on a CPU
    that thread would compete with the training step for the cores.
    """
    if sparse_first_layer is not None and not isinstance(sparse_first_layer, bool):
        raise InvalidParameterError(f"sparse_first_layer must be True, False or None, got {sparse_first_layer!r}.")
    if sparse_first_layer is None:
        density = nonzero_fraction(X)
        wide = X.shape[1] >= SPARSE_FIRST_LAYER_MIN_GENES
        sparse_first_layer = wide and density is not None and density <= SPARSE_FIRST_LAYER_MAX_DENSITY
    gpu = device.type == "cuda"
    return {
        "sparse_counts": sparse_first_layer,
        "csr_transfer": gpu and not sparse_first_layer,
        "read_ahead": READ_AHEAD_GPU if gpu else 0,
    }
