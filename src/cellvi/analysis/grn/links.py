"""Edges of a fitted cluster GRN: the table, filtering by p-value and top-k |coef|, network scores."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pandas as pd
import scipy.sparse as sp

__all__ = ["coef_matrix", "filter_links", "links_table", "network_scores"]


def links_table(fit: dict, reg_names, genes, allowed: np.ndarray, cluster=None) -> pd.DataFrame:
    """All fitted edges as a table: source, target, coef_mean (standardised), coef_raw (expression units),
    coef_abs, p, -logp, n_bootstraps (and cluster). One row per allowed edge used by >= 1 bootstrap."""
    r, g = np.nonzero(allowed & (fit["n"] > 0))
    coef, p = fit["coef"][r, g], fit["p"][r, g]
    # categorical names and float32 values: a cluster's table has up to R x G rows (0.9M for 300 TFs x
    # 3,000 genes), ~25 MB like this against ~65 MB with object strings and float64
    df = pd.DataFrame(
        {
            "source": pd.Categorical.from_codes(r, categories=pd.Index(np.asarray(reg_names, dtype=str))),
            "target": pd.Categorical.from_codes(g, categories=pd.Index(np.asarray(genes, dtype=str))),
            "coef_mean": coef.astype(np.float32),
            "coef_raw": fit["coef_raw"][r, g].astype(np.float32),
            "coef_abs": np.abs(coef).astype(np.float32),
            "p": p,
            "-logp": (-np.log10(np.clip(p, 1e-300, None))).astype(np.float32),
            "n_bootstraps": fit["n"][r, g].astype(np.int16),
        }
    )
    if cluster is not None:
        df.insert(0, "cluster", cluster)
    return df


def filter_links(
    links: pd.DataFrame, p: float = 0.001, top_k: int | None = 2000, weight: str = "coef_abs"
) -> pd.DataFrame:
    """Edges with p-value below ``p``, then the ``top_k`` largest by ``weight`` (CellOracle's
    ``filter_links(p=0.001, weight="coef_abs", threshold_number=2000)``), per cluster if there is a
    ``cluster`` column."""
    kept = links[links["p"] < p]
    if top_k is None:
        return kept.reset_index(drop=True)
    if "cluster" in kept.columns:
        kept = kept.sort_values(weight, ascending=False).groupby("cluster", sort=False, observed=True).head(top_k)
        return kept.sort_values(["cluster", weight], ascending=[True, False]).reset_index(drop=True)
    return kept.nlargest(top_k, weight).reset_index(drop=True)


def coef_matrix(links: pd.DataFrame, genes, value: str = "coef_raw") -> sp.csr_matrix:
    """Sparse (G, G) matrix of ``value`` with regulators in rows and targets in columns (the operator
    that the perturbation propagates through: ``delta @ C``)."""
    index = pd.Index(np.asarray(genes, dtype=str))
    r = index.get_indexer(links["source"].astype(str))
    t = index.get_indexer(links["target"].astype(str))
    ok = (r >= 0) & (t >= 0)
    return sp.csr_matrix((links[value].to_numpy()[ok], (r[ok], t[ok])), shape=(len(index), len(index)))


def network_scores(links: pd.DataFrame) -> pd.DataFrame:
    """Per gene of a (filtered) network: degree_all, degree_in, degree_out (edge counts),
    degree_centrality_all, betweenness_centrality (directed, unweighted) and eigenvector_centrality
    (undirected, weighted by |coef|), computed with networkx."""
    g = nx.DiGraph()
    g.add_weighted_edges_from(zip(links["source"], links["target"], links["coef_abs"]))
    nodes = list(g.nodes)
    if not nodes:
        return pd.DataFrame(
            columns=[
                "degree_all",
                "degree_in",
                "degree_out",
                "degree_centrality_all",
                "betweenness_centrality",
                "eigenvector_centrality",
            ]
        )
    und = g.to_undirected()
    try:
        eig = nx.eigenvector_centrality(und, max_iter=2000, tol=1e-8, weight="weight")
    except (nx.PowerIterationFailedConvergence, nx.NetworkXException):
        eig = nx.eigenvector_centrality_numpy(und, weight="weight")
    btw = nx.betweenness_centrality(g) if len(nodes) <= 5000 else nx.betweenness_centrality(g, k=1000, seed=0)
    dc = nx.degree_centrality(g)
    out = pd.DataFrame(
        {
            "degree_all": pd.Series(dict(g.degree())),
            "degree_in": pd.Series(dict(g.in_degree())),
            "degree_out": pd.Series(dict(g.out_degree())),
            "degree_centrality_all": pd.Series(dc),
            "betweenness_centrality": pd.Series(btw),
            "eigenvector_centrality": pd.Series(eig),
        }
    ).loc[nodes]
    return out.sort_values("degree_out", ascending=False)
