"""Analyses on top of a trained model: integration metrics (and differential expression)."""

from .integration import benchmark_integration
from .loadings import plot_loadings, program_precision, top_genes
from .metrics import batch_mixing_entropy, knn_label_accuracy

__all__ = [
    "batch_mixing_entropy",
    "benchmark_integration",
    "knn_label_accuracy",
    "plot_loadings",
    "program_precision",
    "top_genes",
]
