"""Inputs of GRN inference: the expression matrix and the candidate regulators of each target gene.

Candidate regulators come from a TF list, from a base GRN in CellOracle's layout (``peak_id``,
``gene_short_name``, then one 0/1 column per TF; parquet or CSV), or, when neither is given, from every
gene (logged as a warning). Expression is the denoised expression of a trained SCVI model or
log-normalised counts (``log1p(counts / s * 1e4)``, ``s`` each cell's effective library, see
:func:`size_factors`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ...errors import (
    InvalidDataError,
    InvalidParameterError,
    InvalidTypeError,
    MissingKeyError,
)

log = logging.getLogger("cellvi.grn")

__all__ = ["Regulators", "candidate_regulators", "expression_matrix", "read_base_grn", "size_factors"]


@dataclass
class Regulators:
    """Candidate regulators: ``names`` (R genes, all among the data's genes), ``allowed`` (R, G) bool
    (``allowed[r, g]``: regulator r may regulate gene g; never a gene itself) and ``source``."""

    names: list
    index: np.ndarray  # (R,) positions of the regulators among the data's genes
    allowed: np.ndarray  # (R, G) bool
    source: str

    @property
    def shared(self) -> bool:
        """True when every target may use every regulator but itself (one factorisation per bootstrap)."""
        G = self.allowed.shape[1]
        full = np.ones_like(self.allowed)
        full[np.arange(len(self.index)), self.index] = False
        return G > 0 and bool(np.array_equal(self.allowed, full))


def read_base_grn(base_grn) -> pd.DataFrame:
    """A base GRN in CellOracle's layout from a DataFrame or a parquet/CSV path (never executed, only
    parsed). Returns the DataFrame; raises InvalidDataError when the layout is wrong."""
    if isinstance(base_grn, (str, Path)):
        path = Path(base_grn)
        if not path.is_file():
            raise InvalidParameterError(f"base GRN file not found: {path}")
        df = pd.read_parquet(path) if path.suffix in (".parquet", ".pq") else pd.read_csv(path)
    elif isinstance(base_grn, pd.DataFrame):
        df = base_grn
    else:
        raise InvalidTypeError("base_grn must be a DataFrame or a path to a parquet/CSV file.")
    if "gene_short_name" not in df.columns:
        raise InvalidDataError(
            "base GRN must have CellOracle's layout: peak_id, gene_short_name, one 0/1 column per TF "
            f"(columns found: {list(df.columns)[:8]})."
        )
    return df


def candidate_regulators(genes, tfs=None, base_grn=None) -> Regulators:
    """Candidate regulators of every gene of ``genes`` (the data's gene names, G).

    tfs: a list of TF names (each may regulate every other gene); base_grn: CellOracle-layout table (see
    :func:`read_base_grn`), where TF ``r`` may regulate gene ``g`` if some row with
    ``gene_short_name == g`` has a non-zero ``r`` column. Neither: every gene may regulate every other.
    """
    genes = pd.Index(np.asarray(genes, dtype=str))
    G = len(genes)
    if tfs is not None and base_grn is not None:
        raise InvalidParameterError("give either tfs or base_grn, not both.")
    if base_grn is not None:
        df = read_base_grn(base_grn)
        tf_cols = [c for c in df.columns if c not in ("peak_id", "gene_short_name")]
        in_data = [c for c in tf_cols if c in genes]
        targets = df["gene_short_name"].astype(str)
        rows = targets.isin(genes).to_numpy()
        if not in_data or not rows.any():
            raise InvalidDataError(
                f"the base GRN has no overlap with the data: {len(in_data)} of its {len(tf_cols)} TFs and "
                f"{int(rows.sum())} of its {len(df)} rows' target genes are among the {G} genes."
            )
        sub = df.loc[rows, in_data].apply(pd.to_numeric, errors="coerce").fillna(0).to_numpy() != 0
        per_target = pd.DataFrame(sub, columns=in_data).groupby(targets[rows].to_numpy()).any()
        allowed = np.zeros((len(in_data), G), dtype=bool)
        allowed[:, genes.get_indexer(per_target.index)] = per_target.to_numpy().T
        names, source = in_data, f"base GRN ({len(in_data)} TFs, {len(df)} rows)"
    elif tfs is not None:
        tfs = [str(t) for t in (tfs.tolist() if hasattr(tfs, "tolist") else tfs)]
        names = [t for t in dict.fromkeys(tfs) if t in genes]
        if not names:
            raise MissingKeyError(f"none of the {len(tfs)} TFs is among the genes (first: {tfs[:5]}).")
        if len(names) < len(set(tfs)):
            log.warning(
                "%d of %d TFs are not among the genes and are ignored.", len(set(tfs)) - len(names), len(set(tfs))
            )
        allowed = np.ones((len(names), G), dtype=bool)
        source = f"TF list ({len(names)} TFs)"
    else:
        log.warning("No TF list or base GRN given: every one of the %d genes is a candidate regulator.", G)
        names, allowed, source = list(genes), np.ones((G, G), dtype=bool), f"every gene ({G})"
    index = genes.get_indexer(names)
    allowed[np.arange(len(names)), index] = False  # a gene never regulates itself
    return Regulators(list(names), index.astype(np.int64), allowed, source)


def _counts(adata, layer):
    X = adata.layers[layer] if layer is not None else adata.X
    if layer is not None and layer not in adata.layers:
        raise MissingKeyError(f"layer {layer!r} not in adata.layers.")
    return X


def size_factors(X, method: str = "median_ratio", min_detected: float = 0.5, block: int = 16384) -> np.ndarray:
    """Effective library size (n,) of each cell of counts ``X`` (n, G), in counts.

    ``"total"``: the total counts. ``"median_ratio"`` (default): DESeq's median-of-ratios on ``log1p``,
    ``exp(median_g(log1p x_cg - mean_c log1p x_cg))``, over the genes detected in at least
    ``min_detected`` of the cells (all genes if fewer than 20 are), rescaled to the median total count.
    Negative counts raise :class:`~cellvi.errors.InvalidDataError`.
    Why: with the total, a cell's normalised values all move together when a few highly expressed genes
    change (composition), which gives every abundant gene, even one with no targets, many significant
    regression edges; the median ignores the genes that change as long as most do not. ``X`` is read
    ``block`` rows at a time (scipy sparse or dense, or an anndata backed sparse dataset).
    """
    if method not in ("total", "median_ratio"):
        raise InvalidParameterError(f"size_factors must be 'total' or 'median_ratio', got {method!r}.")
    n, G = X.shape
    blocks = [(lo, min(lo + block, n)) for lo in range(0, n, block)]

    def rows(lo, hi):  # works for scipy matrices and anndata backed sparse datasets alike
        return sp.csr_matrix(X[lo:hi], dtype=np.float32)

    lib = np.zeros(n)
    detected = np.zeros(G)
    for lo, hi in blocks:
        B = rows(lo, hi)
        if B.nnz and B.data.min() < 0:
            raise InvalidDataError("counts must be non-negative for log-normalisation.")
        lib[lo:hi] = np.asarray(B.sum(axis=1)).ravel()
        detected += np.asarray((B > 0).sum(axis=0)).ravel()
    if method == "total":
        return np.where(lib > 0, lib, 1.0).astype(np.float32)
    genes = np.flatnonzero(detected >= min_detected * n)
    if len(genes) < 20:
        genes = np.arange(G)
    gmean = np.zeros(len(genes))
    for lo, hi in blocks:
        gmean += np.log1p(rows(lo, hi)[:, genes].toarray()).sum(0)
    gmean /= n
    ratio = np.empty(n)
    for lo, hi in blocks:
        ratio[lo:hi] = np.exp(np.median(np.log1p(rows(lo, hi)[:, genes].toarray()) - gmean, axis=1))
    s = ratio * np.median(lib) / np.median(ratio)
    return np.where(s > 0, s, 1.0).astype(np.float32)


def expression_matrix(
    adata,
    model=None,
    layer=None,
    library_size: float = 1e4,
    log1p: bool = True,
    batch_size: int | None = None,
    normalisation: str = "median_ratio",
    library: np.ndarray | None = None,
) -> tuple[np.ndarray, str]:
    """Expression (n_cells, n_genes) float32 and a description.

    model: a trained SCVI; its denoised expression ``get_normalized_expression(library_size=...)``
    (per ``library_size`` counts, log1p'd if ``log1p``). Else: counts from ``layer`` (default X),
    divided by each cell's effective library (:func:`size_factors` with ``normalisation``: median of
    ratios by default, ``"total"`` for the total counts; or ``library`` (n_cells,) when the caller has
    them already), times ``library_size``, log1p'd (``log1p=False`` takes X as given, e.g. continuous
    expression that is not counts).
    """
    if model is not None:
        expr = model.get_normalized_expression(
            adata, library_size=library_size, return_numpy=True, batch_size=batch_size
        )
        expr = np.asarray(expr, dtype=np.float32)
        desc = f"scVI denoised expression (per {library_size:g})"
    else:
        X = _counts(adata, layer)
        if not log1p:
            expr = np.asarray(X.toarray() if sp.issparse(X) else X, dtype=np.float32)
            return expr, "expression as given"
        X = sp.csr_matrix(X, dtype=np.float32)
        if X.nnz and X.data.min() < 0:
            raise InvalidDataError("counts must be non-negative for log-normalisation.")
        lib = size_factors(X, normalisation) if library is None else np.asarray(library, dtype=np.float32)
        expr = (sp.diags((library_size / lib).astype(np.float32)) @ X).toarray()
        desc = f"log-normalised counts ({normalisation.replace('_', ' ')} size factors, per {library_size:g})"
    if not np.all(np.isfinite(expr)):
        raise InvalidDataError("the expression matrix holds NaN or infinite values.")
    if log1p:
        np.log1p(expr, out=expr)
    return expr, desc
