"""A feed-forward classifier (pure torch): scANVI's q(y | z1) and SOLO's doublet classifier."""

from __future__ import annotations

import torch
from torch import nn

from ..nn import FCLayers
from ..nn.layers import float32


class Classifier(nn.Module):
    """(n_cells, n_input) -> logits (n_cells, n_classes): ``FCLayers`` (Linear -> BatchNorm -> ReLU ->
    Dropout, ``n_layers`` deep) then a linear map, as scvi-tools' ``Classifier(logits=True)``. With
    ``n_layers=0`` a linear map.

    batch_norm_momentum: None keeps FCLayers' 0.01 (scANVI, as scvi-tools). SOLO passes 0.1: a small
    classifier takes few steps per epoch (400 cells and their 800 doublets: 9), and with 0.01 the running
    statistics that evaluation uses lagged the training batches' for dozens of epochs (SOLO then
    predicted the class prior).
    """

    def __init__(
        self,
        n_input: int,
        n_classes: int,
        n_hidden: int = 128,
        n_layers: int = 1,
        dropout_rate: float = 0.1,
        use_batch_norm: bool = True,
        use_layer_norm: bool = False,
        batch_norm_momentum: float | None = None,
    ) -> None:
        super().__init__()
        self.hidden = None
        if n_layers > 0 and n_hidden > 0:
            self.hidden = FCLayers(
                n_input, n_hidden, (), 0, n_layers, n_hidden, dropout_rate, True, use_batch_norm, use_layer_norm
            )
            n_input = n_hidden
            if batch_norm_momentum is not None:
                for module in self.hidden.modules():
                    if isinstance(module, nn.BatchNorm1d):
                        module.momentum = batch_norm_momentum
        self.out = nn.Linear(n_input, n_classes)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return float32(self.out(self.hidden(z) if self.hidden is not None else z))
