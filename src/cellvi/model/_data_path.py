"""How training minibatches travel to the model: dense, as CSR pieces densified on the device, or as
non-zeros all the way into the encoder's first layer (docs/performance.md, "The data path")."""

from __future__ import annotations

import torch

from ..errors import InvalidParameterError

# The sparse first layer pays from this many genes on (bench/results/wide_data.md)
SPARSE_FIRST_LAYER_MIN_GENES = 5_000
READ_AHEAD_GPU = 2  # minibatches prepared ahead while the device trains


def training_data_path(device: torch.device, n_genes: int, sparse_first_layer: bool | None) -> dict:
    """Loader options (see :class:`~cellvi.data.MinibatchLoader`) for training on ``device``.

    ``sparse_first_layer``: the encoders read the minibatch's non-zeros (``sparse_counts``); None picks
    it from ``n_genes``. Otherwise, on CUDA, the counts are sent as CSR pieces and densified on the
    device (``csr_transfer``). On CUDA the next minibatches are prepared in a background thread while
    the device trains (``read_ahead``); on CPU that thread would compete with the step for the cores.
    """
    if sparse_first_layer is not None and not isinstance(sparse_first_layer, bool):
        raise InvalidParameterError(f"sparse_first_layer must be True, False or None, got {sparse_first_layer!r}.")
    sparse = n_genes >= SPARSE_FIRST_LAYER_MIN_GENES if sparse_first_layer is None else sparse_first_layer
    gpu = device.type == "cuda"
    return {"sparse_counts": sparse, "csr_transfer": gpu and not sparse, "read_ahead": READ_AHEAD_GPU if gpu else 0}
