"""Gene regulatory networks per cluster and in-silico perturbation (CellOracle's job), sparse and offline.

Typical use::

    from cellvi.analysis import grn
    oracle = grn.Oracle(adata, cluster_key="leiden", embedding_key="X_umap", model=scvi_model,
                        tfs=my_tfs, pseudotime_key="dpt_pseudotime")
    links = oracle.fit_grn(alpha=10, n_bootstraps=20, p=0.001, top_k=2000)
    res = oracle.simulate_shift({"GATA1": 0.0}, n_propagation=3)
    fig = grn.plot_shift(res, oracle.embedding)
    oracle.scvi_shift(res)   # the same knockout through the scVI encoder, and its agreement

See docs/grn.md.
"""

from .decode import latent_shift, shift_agreement
from .inputs import Regulators, candidate_regulators, expression_matrix, read_base_grn, size_factors
from .links import coef_matrix, filter_links, links_table, network_scores
from .metrics import auprc_ratio, early_precision_ratio, edge_scores
from .oracle import ClusterTooSmallError, Oracle, Perturbation
from .report import grn_report_section, plot_score, plot_shift
from .ridge import bagging_ridge
from .rows import CountRows, RowBlocks
from .shift import (
    embedding_shift,
    grid_field,
    knn,
    perturbation_score,
    propagate,
    pseudotime_gradient,
    transition_matrix,
)

__all__ = [
    "ClusterTooSmallError",
    "CountRows",
    "Oracle",
    "Perturbation",
    "Regulators",
    "RowBlocks",
    "auprc_ratio",
    "bagging_ridge",
    "candidate_regulators",
    "coef_matrix",
    "early_precision_ratio",
    "edge_scores",
    "embedding_shift",
    "expression_matrix",
    "filter_links",
    "grid_field",
    "grn_report_section",
    "knn",
    "latent_shift",
    "links_table",
    "network_scores",
    "perturbation_score",
    "plot_score",
    "plot_shift",
    "propagate",
    "pseudotime_gradient",
    "read_base_grn",
    "shift_agreement",
    "size_factors",
    "transition_matrix",
]
