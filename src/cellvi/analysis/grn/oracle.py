"""``Oracle``: per-cluster GRNs and in-silico perturbation on one AnnData (CellOracle's workflow)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from ...errors import InvalidDataError, InvalidParameterError, MissingKeyError
from . import shift as S
from .decode import latent_shift, shift_agreement
from .inputs import _counts, candidate_regulators, expression_matrix, size_factors
from .links import coef_matrix, filter_links, links_table, network_scores
from .ridge import bagging_ridge
from .rows import CountRows, RowBlocks

log = logging.getLogger("cellvi.grn")

__all__ = ["ClusterTooSmallError", "Oracle", "Perturbation"]


class ClusterTooSmallError(InvalidDataError):
    """A cluster has too few cells to fit its GRN."""


@dataclass
class Perturbation:
    """Result of :meth:`Oracle.simulate_shift`. Arrays are per cell (n cells) unless stated."""

    perturb: dict
    delta: np.ndarray | None  # (n, G) simulated expression change (None with chunked expression)
    transitions: object  # scipy CSR (n, n), k entries per row
    shift: np.ndarray  # (n, 2) shift vector on the embedding
    strength: np.ndarray  # (n,) size of the change relative to the neighbour distances
    grid: dict  # see cellvi.analysis.grn.shift.grid_field
    gradient: np.ndarray | None = None  # (n, 2) unit pseudotime gradient
    score: np.ndarray | None = None  # (n,) perturbation score
    grid_score: np.ndarray | None = None  # (grid points,) perturbation score on the grid
    clusters: pd.Series | None = None
    timings: dict = field(default_factory=dict)
    scvi: dict | None = None  # see Oracle.scvi_shift

    def score_by_cluster(self) -> pd.DataFrame:
        """Mean and median perturbation score and mean shift length per cluster."""
        if self.score is None:
            raise InvalidParameterError("no pseudotime was given, so there is no perturbation score.")
        df = pd.DataFrame(
            {
                "cluster": self.clusters.to_numpy(),
                "score": self.score,
                "shift_length": np.linalg.norm(self.shift, axis=1),
            }
        )
        return df.groupby("cluster", observed=True).agg(
            mean_score=("score", "mean"),
            median_score=("score", "median"),
            mean_shift=("shift_length", "mean"),
            n_cells=("score", "size"),
        )


class Oracle:
    """Per-cluster gene regulatory networks and perturbation simulation.

    adata: cells x genes (raw counts in ``layer``/X, or expression given as is with ``log1p=False`` and
    no model). cluster_key: ``obs`` column of the clusters a GRN is fitted for. embedding_key: ``obsm``
    2-D embedding (e.g. ``"X_umap"``) the shifts are drawn on. model: a trained SCVI whose denoised
    expression is used (default: log-normalised counts). tfs / base_grn: candidate regulators (see
    :func:`~cellvi.analysis.grn.candidate_regulators`; neither: every gene, with a warning).
    pseudotime_key: ``obs`` column of pseudotime for the perturbation score. n_neighbors: the k of the
    sparse transitions. normalisation: size factors of the log-normalised counts (``"median_ratio"``,
    default, or ``"total"``; see :func:`~cellvi.analysis.grn.size_factors`). batch_key: ``obs`` column of
    batches; each gene's batch offset within a cluster is removed before the GRN is fitted (a batch shifts
    many genes at once, which otherwise reads as regulation between them); propagation and transitions
    use the expression as it is. chunked: compute the log-normalised expression a block of cells at a time
    from the (sparse, possibly backed: ``anndata.read_h5ad(path, backed="r")``) counts instead of holding
    it densely (default: True when ``adata`` is backed); the simulated change is then not kept per cell.
    """

    def __init__(
        self,
        adata,
        cluster_key: str,
        embedding_key: str = "X_umap",
        model=None,
        layer=None,
        tfs=None,
        base_grn=None,
        pseudotime_key: str | None = None,
        log1p: bool = True,
        library_size: float = 1e4,
        n_neighbors: int = 30,
        normalisation: str = "median_ratio",
        batch_key: str | None = None,
        chunked: bool | None = None,
    ):
        if cluster_key not in adata.obs:
            raise MissingKeyError(f"cluster_key {cluster_key!r} not in adata.obs.")
        if embedding_key not in adata.obsm:
            raise MissingKeyError(f"embedding_key {embedding_key!r} not in adata.obsm (run scanpy's umap first).")
        emb = np.asarray(adata.obsm[embedding_key], dtype=np.float32)
        if emb.ndim != 2 or emb.shape[1] < 2 or not np.all(np.isfinite(emb)):
            raise InvalidDataError(f"obsm[{embedding_key!r}] must be finite with at least 2 columns.")
        if batch_key is not None and batch_key not in adata.obs:
            raise MissingKeyError(f"batch_key {batch_key!r} not in adata.obs.")
        if pseudotime_key is not None and pseudotime_key not in adata.obs:
            raise MissingKeyError(f"pseudotime_key {pseudotime_key!r} not in adata.obs.")
        self.adata, self.model, self.layer = adata, model, layer
        self.embedding = emb[:, :2]
        self.clusters = adata.obs[cluster_key].astype("category")
        self.genes = pd.Index(np.asarray(adata.var_names, dtype=str))
        self.library_size, self.log1p = library_size, log1p
        self.regulators = candidate_regulators(self.genes, tfs=tfs, base_grn=base_grn)
        t0 = time.perf_counter()
        self.chunked = bool(getattr(adata, "isbacked", False)) if chunked is None else chunked
        self._library = None  # the size factors the log-normalised expression was computed with
        if model is None and log1p:
            self._library = size_factors(_counts(adata, layer), normalisation)
        if self.chunked:
            if self._library is None:
                raise InvalidParameterError("chunked expression is computed from counts: no model, log1p=True.")
            self.expression = CountRows(_counts(adata, layer), self._library, library_size)
            self.expression_source = (
                f"log-normalised counts ({normalisation.replace('_', ' ')} size factors, per {library_size:g}; "
                "computed per block of cells)"
            )
        else:
            self.expression, self.expression_source = expression_matrix(
                adata, model, layer, library_size, log1p, normalisation=normalisation, library=self._library
            )
        self.batches = None if batch_key is None else adata.obs[batch_key].astype(str).to_numpy()
        self.timings = {"expression_s": time.perf_counter() - t0}
        self.pseudotime = None if pseudotime_key is None else adata.obs[pseudotime_key].to_numpy(np.float64)
        if self.pseudotime is not None and not np.all(np.isfinite(self.pseudotime)):
            raise InvalidDataError(f"obs[{pseudotime_key!r}] has NaN or infinite values.")
        self.n_neighbors = n_neighbors
        self._nbrs = None
        self.links_all: dict = {}
        self.links = pd.DataFrame()
        self.coefs: dict = {}

    # ------------------------------------------------------------------ GRN
    def fit_grn(
        self,
        alpha: float = 10.0,
        n_bootstraps: int = 20,
        feature_fraction: float = 0.8,
        min_cells: int = 30,
        skip_small: bool = False,
        p: float = 0.001,
        top_k: int | None = 2000,
        device=None,
        seed: int = 0,
        pvalue: str = "bootstrap",
        transform: str = "none",
    ) -> pd.DataFrame:
        """Fit a bagging ridge GRN per cluster (see :func:`~cellvi.analysis.grn.bagging_ridge`), then keep
        edges with p < ``p`` and the ``top_k`` largest ``|coef|`` per cluster (``pvalue``: see
        :func:`~cellvi.analysis.grn.bagging_ridge`; ``"celloracle"`` for CellOracle's t-test; ``transform``:
        ``"normal_scores"`` regresses each cluster's normal scores, not its expression, see the same
        function; not with chunked expression). A cluster with fewer than
        ``min_cells`` cells raises ClusterTooSmallError (or, with ``skip_small``, is left without GRN).
        Returns the filtered links (cluster, source, target, coef_mean, coef_raw, coef_abs, p, -logp)."""
        sizes = self.clusters.value_counts()
        small = sizes[sizes < max(min_cells, 3)]
        if len(small) and not skip_small:
            raise ClusterTooSmallError(
                f"clusters too small to fit a GRN (< {max(min_cells, 3)} cells): {dict(small)}; merge them, "
                "lower min_cells or pass skip_small=True."
            )
        t0 = time.perf_counter()
        reg = self.regulators
        for k, cl in enumerate(sizes.index):
            if cl in small.index:
                log.warning("cluster %r (%d cells) skipped: too small.", cl, sizes[cl])
                continue
            rows = np.flatnonzero((self.clusters == cl).to_numpy())
            fit = bagging_ridge(
                self._fit_input(rows),
                reg.index,
                reg.allowed,
                alpha,
                n_bootstraps,
                feature_fraction,
                seed + k,
                device,
                reg.shared,
                pvalue=pvalue,
                transform=transform,
            )
            self.links_all[cl] = links_table(fit, reg.names, self.genes, reg.allowed, cluster=cl)
        self.timings["fit_grn_s"] = time.perf_counter() - t0
        return self.filter_links(p, top_k)

    def _fit_input(self, rows: np.ndarray):
        """Expression of a cluster's cells (an array, or row blocks when chunked), with each batch's offset
        from the cluster mean removed."""
        if self.chunked:
            if self.batches is None:
                return RowBlocks(self.expression, rows)
            _, groups = np.unique(self.batches[rows], return_inverse=True)
            blocks = RowBlocks(self.expression, rows, groups=groups)
            centre, by = blocks.mean_by_group()
            blocks.offsets = (centre - by).astype(np.float32)
            return blocks
        X = self.expression[rows]
        if self.batches is None:
            return X
        X = X.copy()
        b = self.batches[rows]
        centre = X.mean(0)
        for level in np.unique(b):
            m = b == level
            X[m] += centre - X[m].mean(0)
        return X

    def _chunked_transitions(self, idx, values, n_propagation, sigma_corr, others, block=None):
        """Propagation and transitions a block of cells at a time (the change is never held for all)."""
        nbrs = self.neighbours()
        n, k = nbrs.shape
        G = len(self.genes)
        block = block or max(16, int(2e7 // max(k * G, 1)))
        vals = np.full((n, k), 1.0 / k, dtype=np.float32)  # cells without a GRN: no change, uniform
        strength = np.zeros(n, dtype=np.float32)
        keep = S.gene_mask(G, others)
        for cl, C in self.coefs.items():
            rows = np.flatnonzero((self.clusters == cl).to_numpy())
            # blocks of cells close on the embedding share most neighbours: each row is computed ~once
            rows = rows[S.spatial_order(self.embedding[rows])]
            for lo in range(0, len(rows), block):
                r = rows[lo : lo + block]
                x = self.expression[r]
                d = S.propagate(x, C, idx, values, n_propagation)
                Xn = torch.from_numpy(self.expression[nbrs[r].ravel()].reshape(len(r), k, G))
                vals[r], strength[r] = S.transition_block(
                    Xn, torch.from_numpy(x), torch.from_numpy(d), keep, sigma_corr
                )
        T = sp.csr_matrix((vals.ravel(), nbrs.ravel(), np.arange(0, n * k + 1, k)), shape=(n, n))
        return T, strength

    def filter_links(self, p: float = 0.001, top_k: int | None = 2000) -> pd.DataFrame:
        """Refilter every cluster's links (see :func:`~cellvi.analysis.grn.filter_links`) and rebuild the
        coefficient matrices the simulation uses. Returns the filtered links."""
        if not self.links_all:
            raise InvalidParameterError("call fit_grn first.")
        kept = [filter_links(df, p, top_k) for df in self.links_all.values()]
        self.links = pd.concat(kept, ignore_index=True)
        self.coefs = {cl: coef_matrix(df, self.genes) for cl, df in zip(self.links_all, kept)}
        return self.links

    def network_scores(self, cluster) -> pd.DataFrame:
        """Degree, in/out degree, betweenness and eigenvector centrality of the cluster's filtered GRN."""
        if cluster not in self.links_all:
            raise MissingKeyError(f"no GRN fitted for cluster {cluster!r}.")
        return network_scores(self.links[self.links["cluster"] == cluster])

    # ------------------------------------------------------------------ perturbation
    def _perturb_index(self, perturb: dict) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(perturb, dict) or not perturb:
            raise InvalidParameterError("perturb must be a non-empty dict {gene: value}, e.g. {'GATA1': 0.0}.")
        missing = [g for g in perturb if g not in self.genes]
        if missing:
            raise MissingKeyError(f"perturbed genes not among the data's genes: {missing[:5]}.")
        values = np.array([float(v) for v in perturb.values()])
        if not np.all(np.isfinite(values)) or (values < 0).any():
            raise InvalidParameterError("perturbation values must be finite and non-negative (0 = knockout).")
        return self.genes.get_indexer(list(perturb)), values

    def neighbours(self) -> np.ndarray:
        """(n, k) nearest neighbours of each cell on the embedding (computed once)."""
        if self._nbrs is None:
            self._nbrs = S.knn(self.embedding, self.n_neighbors)
        return self._nbrs

    def simulate_shift(
        self,
        perturb: dict,
        n_propagation: int = 3,
        sigma_corr: float = 0.05,
        scale_by_strength: bool = True,
        grid_steps: int = 40,
        smooth: float = 0.8,
    ) -> Perturbation:
        """Simulate setting genes to values (expression scale of the analysis; 0 is a knockout).

        The change propagates ``n_propagation`` times through each cluster's filtered GRN, with the
        perturbed genes reset each step and expression kept >= 0; it becomes sparse transition
        probabilities over each cell's k embedding neighbours (the perturbed genes themselves left out of
        the correlation, so that only their downstream effect moves cells), a shift vector per cell, a grid
        vector field, and with a pseudotime, the perturbation score (shift . unit pseudotime gradient)."""
        if not self.coefs:
            raise InvalidParameterError("call fit_grn first.")
        if n_propagation < 1:
            raise InvalidParameterError("n_propagation must be >= 1.")
        idx, values = self._perturb_index(perturb)
        t = {}
        t0 = time.perf_counter()
        nbrs = self.neighbours()
        t["knn_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        others = np.setdiff1d(np.arange(len(self.genes)), idx)
        delta = None
        if self.chunked:
            T, strength = self._chunked_transitions(idx, values, n_propagation, sigma_corr, others)
        else:
            delta = np.zeros_like(self.expression)
            for cl, C in self.coefs.items():
                rows = np.flatnonzero((self.clusters == cl).to_numpy())
                delta[rows] = S.propagate(self.expression[rows], C, idx, values, n_propagation)
            T, strength = S.transition_matrix(self.expression, delta, nbrs, sigma_corr, genes=others)
        shift = S.embedding_shift(T, self.embedding, nbrs, strength if scale_by_strength else None)
        t["propagate_transitions_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        grid = S.grid_field(self.embedding, shift, grid_steps, smooth)
        res = Perturbation(dict(perturb), delta, T, shift, strength, grid, clusters=self.clusters)
        if self.pseudotime is not None:
            res.gradient = S.pseudotime_gradient(self.embedding, self.pseudotime, nbrs)
            res.score = S.perturbation_score(shift, res.gradient)
            dev = S.grid_field(self.embedding, res.gradient, grid_steps, smooth)["vectors"]
            res.grid_score = S.perturbation_score(grid["vectors"], dev)
        t["grid_s"] = time.perf_counter() - t0
        res.timings = t
        return res

    def _to_counts(self, value, library):
        if self._library is not None and len(library) == len(self._library):
            library = self._library  # the size factors the expression was normalised with
        scale = library / self.library_size
        return (np.expm1(value) if self.log1p else value) * scale

    def scvi_shift(self, result: Perturbation, model=None, sigma: float = 0.05, batch_size=None) -> dict:
        """The same perturbation decoded through the scVI model (see :mod:`~cellvi.analysis.grn.decode`):
        set the genes in the counts, re-encode, move cells in the latent space. Stores and returns
        ``shift`` (n, 2), ``dz``, ``strength``, ``score`` (with pseudotime), and ``agreement`` with the
        GRN shift (per-cell cosine, median, fraction of moving cells that agree; per cluster)."""
        model = model if model is not None else self.model
        if model is None:
            raise InvalidParameterError("scvi_shift needs a trained SCVI model (Oracle(model=...)).")
        idx, values = self._perturb_index(result.perturb)
        out = latent_shift(
            model,
            self.adata,
            idx,
            values,
            self._to_counts,
            self.neighbours(),
            self.embedding,
            sigma,
            self.layer,
            batch_size,
        )
        agree = shift_agreement(result.shift, out["shift"])
        per = pd.DataFrame({"cluster": self.clusters.to_numpy(), "cosine": agree["cosine"]})
        agree["by_cluster"] = per.groupby("cluster", observed=True)["cosine"].agg(["median", "count"])
        out["agreement"] = agree
        if result.gradient is not None:
            out["score"] = S.perturbation_score(out["shift"], result.gradient)
            both = (result.score != 0) & (out["score"] != 0)
            out["score_sign_agreement"] = (
                float((np.sign(result.score[both]) == np.sign(out["score"][both])).mean())
                if both.any()
                else float("nan")
            )
        result.scvi = out
        return out
