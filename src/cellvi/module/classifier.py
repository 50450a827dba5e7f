"""A feed-forward classifier over feature vectors (pure torch): SOLO's doublet classifier."""

from __future__ import annotations

import torch
from torch import nn

from ..nn import FCLayers


class Classifier(nn.Module):
    """``FCLayers`` (Linear -> BatchNorm -> ReLU -> Dropout, ``n_layers`` deep) then a linear map to
    ``n_labels`` logits, as scvi-tools' ``Classifier(logits=True)``.

    forward: x (n, n_input) float -> logits (n, n_labels).
    """

    def __init__(
        self,
        n_input: int,
        n_labels: int = 2,
        n_hidden: int = 128,
        n_layers: int = 1,
        dropout_rate: float = 0.1,
        use_batch_norm: bool = True,
        use_layer_norm: bool = False,
    ) -> None:
        super().__init__()
        self.layers = FCLayers(
            n_input,
            n_hidden,
            n_layers=n_layers,
            n_hidden=n_hidden,
            dropout_rate=dropout_rate,
            use_batch_norm=use_batch_norm,
            use_layer_norm=use_layer_norm,
        )
        self.out = nn.Linear(n_hidden, n_labels)
        # PyTorch's default momentum, not FCLayers' 0.01: a small classifier takes few steps per epoch
        # (400 cells and their 800 doublets: 9), and with 0.01 the running statistics that evaluation
        # uses lagged the training batches' for dozens of epochs (SOLO then predicted the class prior)
        for module in self.modules():
            if isinstance(module, nn.BatchNorm1d):
                module.momentum = 0.1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.layers(x))
