"""Bayesian differential expression from posterior samples of normalized expression.

Pure functions on arrays: nothing here sees an AnnData or a model. The model side
(:meth:`cellvi.model.SCVI.differential_expression`) draws ``scales1`` (n, n_genes) and ``scales2``
(n, n_genes): row ``i`` of each is one posterior sample of the normalized expression (proportions of
a cell's library, rows sum to 1) of one random cell of the group. Rows of the two groups are paired
by position; the pairs are independent draws, so statistics over rows estimate posterior
probabilities over the pair (cell of group 1, cell of group 2).

Two tests (Lopez et al. 2018; Boyeau et al. 2019):

- "vanilla": ``P(h1 > h2)`` per gene and the Bayes factor ``log P / (1 - P)``.
- "change": the log2 fold change ``r = log2(h1 + eps) - log2(h2 + eps)`` per pair; a gene is DE
  when ``|r| > delta``. ``proba_de`` is ``max(P(r >= delta), P(r < -delta))`` ("three": up and
  down are separate hypotheses) or their sum ("two"). Genes are called DE by controlling the
  posterior expected false discovery rate (:func:`fdr_calls`).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.special import logsumexp

EPS_BF = 1e-8  # keeps the Bayes factor finite when a probability is 0 or 1
LFC_SUMMARY_SHRINK = 1e-3  # the LFC summary uses eps * 1e-3: shrinks less than the test itself
NORMALIZED_TOTAL = 1e4  # raw_normalized_mean: counts per 10,000


def cell_passes(pool: np.ndarray, n_samples: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Which cells to encode so that ``n_samples`` posterior samples can be drawn from the group.

    pool: (n_cells,) positions of the group's cells. A group with at least ``n_samples`` cells gives
    one pass over ``n_samples`` distinct random cells; a smaller group gives
    ``ceil(n_samples / n_cells)`` passes over all its cells (each pass a fresh posterior sample).
    Each pass is sorted (faster reads). Select rows with :func:`pick_rows` afterwards. Memory stays
    bounded by about ``2 * n_samples`` rows whatever the group size.
    """
    pool = np.asarray(pool, dtype=np.int64)
    if len(pool) == 0:
        raise ValueError("a cell group is empty")
    if len(pool) >= n_samples:
        return [np.sort(rng.choice(pool, n_samples, replace=False))]
    return [np.sort(pool)] * int(np.ceil(n_samples / len(pool)))


def pick_rows(samples: np.ndarray, n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """``n_samples`` rows of ``samples`` in random order (so that pairing by position is random)."""
    return samples[rng.permutation(len(samples))[:n_samples]]


def importance_weights(log_w: np.ndarray, truncation: bool = False) -> np.ndarray:
    """Self-normalised importance weights of a group's posterior samples: (n,) non-negative, summing
    to 1, from the unnormalised log weights ``log_w`` (n,) (see :mod:`cellvi.module.importance`);
    uniform when all log weights are equal. ``truncation``: raise every log weight to at least the
    log of their mean (the threshold scvi-tools uses, after Ionides 2008), which lowers the variance."""
    log_w = np.asarray(log_w, dtype=np.float64)
    if log_w.ndim != 1 or len(log_w) == 0 or not np.isfinite(log_w).all():
        raise ValueError("log_w must be a non-empty 1-D array of finite log weights")
    if truncation:
        tau = logsumexp(log_w) - np.log(len(log_w))
        log_w = np.maximum(log_w, tau)
    w = np.exp(log_w - log_w.max())
    return w / w.sum()


def inlier_mask(latent: np.ndarray) -> np.ndarray | None:
    """Which cells of a group are not outliers of its latent representation (n_cells, n_latent):
    a robust Gaussian envelope (scikit-learn's ``EllipticEnvelope``, 10% contamination), as
    scvi-tools' ``filter_outlier_cells``. (n_cells,) bool, or None when the covariance cannot be
    estimated (too few cells)."""
    from sklearn.covariance import EllipticEnvelope

    try:
        return EllipticEnvelope(random_state=0).fit_predict(latent) == 1
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------- the tests
def _log_odds(p: np.ndarray) -> np.ndarray:
    """Bayes factor of a probability, ``log(p / (1 - p))`` (natural log), kept finite at 0 and 1."""
    return np.log(p + EPS_BF) - np.log(1.0 - p + EPS_BF)


def vanilla_test(scales1: np.ndarray, scales2: np.ndarray) -> dict[str, np.ndarray]:
    """``proba_m1 = P(h1 > h2)``, ``proba_m2``, ``bayes_factor`` (natural log), ``scale1``,
    ``scale2`` (posterior mean expression per group); each (n_genes,)."""
    p = (scales1 > scales2).mean(0, dtype=np.float64)
    return {
        "proba_m1": p,
        "proba_m2": 1.0 - p,
        "bayes_factor": _log_odds(p),
        "scale1": scales1.mean(0, dtype=np.float64),
        "scale2": scales2.mean(0, dtype=np.float64),
    }


def change_test(
    scales1: np.ndarray,
    scales2: np.ndarray,
    delta: float,
    pseudocount: float,
    test_mode: str = "three",
    gene_block: int = 1024,
) -> dict[str, np.ndarray]:
    """Change-mode test on paired samples, (n, n_genes) each.

    delta: half-width (log2 units) of the no-change region ``[-delta, delta]``.
    pseudocount: ``eps`` added to both expressions before taking logs (see
    :func:`estimate_pseudocount`); it pulls the LFC of barely expressed genes to 0.
    Returns per gene: proba_de, proba_not_de, bayes_factor, scale1, scale2 and the posterior
    summary of the LFC (lfc_mean, lfc_median, lfc_std, lfc_min, lfc_max), computed with
    ``pseudocount * 1e-3`` so that it is close to the unshrunk fold change. Genes are processed in
    blocks of ``gene_block`` to bound temporary memory.
    """
    if scales1.shape != scales2.shape:
        raise ValueError(f"scales1 {scales1.shape} and scales2 {scales2.shape} must have the same shape")
    if test_mode not in ("two", "three"):
        raise ValueError(f"test_mode must be 'two' or 'three', got {test_mode!r}")
    n_genes = scales1.shape[1]
    keys = ("proba_de", "lfc_mean", "lfc_median", "lfc_std", "lfc_min", "lfc_max")
    out = {k: np.empty(n_genes) for k in keys}
    small = pseudocount * LFC_SUMMARY_SHRINK
    for start in range(0, n_genes, gene_block):
        blk = slice(start, min(start + gene_block, n_genes))
        s1, s2 = scales1[:, blk], scales2[:, blk]
        lfc = np.log2(s1 + pseudocount) - np.log2(s2 + pseudocount)
        up = (lfc >= delta).mean(0, dtype=np.float64)
        down = (lfc < -delta).mean(0, dtype=np.float64)
        out["proba_de"][blk] = np.maximum(up, down) if test_mode == "three" else up + down
        lfc = np.log2(s1 + small) - np.log2(s2 + small)
        out["lfc_mean"][blk] = lfc.mean(0, dtype=np.float64)
        out["lfc_median"][blk] = np.median(lfc, axis=0)
        out["lfc_std"][blk] = lfc.std(0, dtype=np.float64)
        out["lfc_min"][blk] = lfc.min(0)
        out["lfc_max"][blk] = lfc.max(0)
    p = out["proba_de"]
    return {
        "proba_de": p,
        "proba_not_de": 1.0 - p,
        "bayes_factor": _log_odds(p),
        "scale1": scales1.mean(0, dtype=np.float64),
        "scale2": scales2.mean(0, dtype=np.float64),
        **{k: out[k] for k in keys[1:]},
    }


def estimate_pseudocount(
    scales1: np.ndarray,
    scales2: np.ndarray,
    silent1: np.ndarray,
    silent2: np.ndarray,
    quantile: float = 0.9,
) -> float:
    """The ``eps`` of the change-mode LFC, from genes that a group does not express.

    silent1, silent2: (n_genes,) bool, genes whose raw mean count in the group is below a threshold.
    For each group, the largest sampled expression of its silent genes is what the model produces
    where there is nothing; take its ``quantile`` over those genes (1e-10 when none), the larger of
    the two groups, divided by the number of genes (the scvi-tools convention, so that results are
    comparable), and at least 1e-10.
    """

    def level(scales, silent):
        if not silent.any():
            return 1e-10
        return float(np.quantile(scales[:, silent].max(0), quantile))

    n_genes = scales1.shape[1]
    return max(1e-10, max(level(scales1, silent1), level(scales2, silent2)) / n_genes)


def estimate_delta(lfc_mean: np.ndarray, coef: float = 0.6, min_delta: float = 0.1, seed: int = 0) -> float:
    """A data-driven ``delta``: fit a 3-component Gaussian mixture to the genes' mean LFCs and take
    ``coef`` times the mean absolute position of the outer two components (at least ``min_delta``)."""
    from sklearn.mixture import GaussianMixture

    means = np.sort(GaussianMixture(3, random_state=seed).fit(np.asarray(lfc_mean)[:, None]).means_.ravel())
    return float(max(min_delta, coef * (abs(means[0]) + abs(means[-1])) / 2))


def fdr_calls(proba_de: np.ndarray, fdr: float = 0.05) -> np.ndarray:
    """DE calls controlling the posterior expected FDR: take genes by decreasing ``proba_de`` while
    the mean of ``1 - proba_de`` over the genes taken is at most ``fdr``. (n_genes,) bool."""
    proba_de = np.asarray(proba_de, dtype=np.float64)
    order = np.argsort(-proba_de, kind="stable")
    expected_fdr = np.cumsum(1.0 - proba_de[order]) / np.arange(1, len(order) + 1)
    calls = np.zeros(len(proba_de), dtype=bool)
    calls[order[: int((expected_fdr <= fdr).sum())]] = True
    return calls


# ---------------------------------------------------------------------------------------- raw counts
def group_count_sums(X, masks: list[np.ndarray], chunk_size: int = 10_000) -> dict[str, np.ndarray]:
    """Per-gene sums over groups of cells of the raw counts, read in row chunks (works on CSR, dense
    and backed matrices).

    X: (n_cells, n_genes) counts. masks: K boolean (n_cells,) arrays (groups may overlap).
    Returns ``n_cells`` (K + 1,), and (K + 1, n_genes) float64 ``counts``, ``nonzero`` (cells with a
    non-zero count) and ``normalized`` (counts per 10,000 of each cell's total); the last row is
    over all cells, so the rest of a group is ``row[-1] - row[k]``.
    """
    n = X.shape[0]
    member = np.vstack([np.asarray(m, dtype=bool) for m in masks] + [np.ones(n, dtype=bool)]).astype(np.float64)
    out = {k: np.zeros((len(member), X.shape[1])) for k in ("counts", "nonzero", "normalized")}
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        block = sp.csr_matrix(X[start:stop], dtype=np.float64)
        w = member[:, start:stop]
        lib = np.asarray(block.sum(1)).ravel()
        scale = np.divide(NORMALIZED_TOTAL, lib, out=np.zeros_like(lib), where=lib > 0)
        out["counts"] += (block.T @ w.T).T
        out["nonzero"] += ((block != 0).astype(np.float64).T @ w.T).T
        out["normalized"] += (sp.diags(scale) @ block).T.dot(w.T).T
    out["n_cells"] = member.sum(1)
    return out


def raw_stats(sums: dict[str, np.ndarray], k1: int, k2: int | None) -> dict[str, np.ndarray]:
    """Per-gene raw-count summaries of group ``k1`` and group ``k2`` (None: all cells not in ``k1``)
    from :func:`group_count_sums`: raw_mean, non_zeros_proportion, raw_normalized_mean (1 and 2)."""
    out = {}
    for name, key in (
        ("raw_mean", "counts"),
        ("non_zeros_proportion", "nonzero"),
        ("raw_normalized_mean", "normalized"),
    ):
        a = sums[key][k1]
        b = sums[key][-1] - a if k2 is None else sums[key][k2]
        n2 = sums["n_cells"][-1] - sums["n_cells"][k1] if k2 is None else sums["n_cells"][k2]
        out[f"{name}1"] = a / max(sums["n_cells"][k1], 1)
        out[f"{name}2"] = b / max(n2, 1)
    return out


# ---------------------------------------------------------------------------------------- in rounds
RELEVANT_ODDS = 3.0  # genes with posterior odds >= 3 either way ("substantial", Kass & Raftery 1995)


class PairTally:
    """The change or vanilla test accumulated over rounds of paired samples, so that no more than one
    round of samples is ever held and the number of pairs can follow the Monte-Carlo error.

    mode: "change" or "vanilla". delta, pseudocount, test_mode: as :func:`change_test`; fixed before
    the first round (the reference path estimates them from all its samples). Per round, ``add``
    takes (r, n_genes) float32 ``scales1`` and ``scales2`` paired by row. ``result`` gives the columns
    of :func:`change_test` / :func:`vanilla_test` over all pairs so far; except ``lfc_median``, which
    is the median of the first round's pairs (an exact median needs every pair kept).
    """

    def __init__(self, mode: str, n_genes: int, delta: float = 0.0, pseudocount: float = 0.0, test_mode: str = "three"):
        if mode not in ("change", "vanilla"):
            raise ValueError(f"mode must be 'change' or 'vanilla', got {mode!r}")
        if test_mode not in ("two", "three"):
            raise ValueError(f"test_mode must be 'two' or 'three', got {test_mode!r}")
        self.mode, self.test_mode, self.n = mode, test_mode, 0
        self.eps, self.small = np.float32(pseudocount), np.float32(pseudocount * LFC_SUMMARY_SHRINK)
        # |lfc| > delta on log2 ratios, compared on the ratios themselves (no logarithm needed)
        self.up_at, self.down_at = np.float32(2.0**delta), np.float32(2.0**-delta)
        zeros = lambda: np.zeros(n_genes)
        self.count_a, self.count_b, self.scale1, self.scale2 = zeros(), zeros(), zeros(), zeros()
        self.lfc_sum, self.lfc_sq = zeros(), zeros()
        self.lfc_min, self.lfc_max = np.full(n_genes, np.inf), np.full(n_genes, -np.inf)
        self.lfc_median, self.shift = None, np.float32(0.0)

    def add(self, scales1: np.ndarray, scales2: np.ndarray) -> None:
        """One round's pairs: float32 (r, n_genes) each. Sums over rows are matrix-vector products
        (BLAS, float32 within a round, float64 across rounds): ~20x faster than ``sum(axis=0)``. The
        LFC is kept as a natural logarithm and turned into log2 units in :meth:`result`: NumPy's
        ``log`` is vectorised on AVX2 and its ``log2`` is not (4x slower, measured)."""
        if scales1.shape != scales2.shape:
            raise ValueError(f"scales1 {scales1.shape} and scales2 {scales2.shape} must have the same shape")
        one = np.ones(len(scales1), dtype=np.float32)
        self.n += len(scales1)
        self.scale1 += one @ scales1
        self.scale2 += one @ scales2
        work = np.empty_like(scales1)
        if self.mode == "vanilla":
            self.count_a += one @ np.greater(scales1, scales2, out=work, casting="unsafe")
            return
        ratio = np.add(scales1, self.eps)
        ratio /= np.add(scales2, self.eps, out=work)
        self.count_a += one @ np.greater_equal(ratio, self.up_at, out=work, casting="unsafe")
        self.count_b += one @ np.less(ratio, self.down_at, out=work, casting="unsafe")
        lfc = np.add(scales1, self.small, out=ratio)
        lfc /= np.add(scales2, self.small, out=work)
        np.log(lfc, out=lfc)  # ln units until result()
        if self.lfc_median is None:
            self.lfc_median = median_rows(lfc)
            self.shift = self.lfc_median.astype(np.float32)  # centres the squares (float32 sums)
        self.lfc_sum += one @ lfc
        np.minimum(self.lfc_min, np.minimum.reduce(lfc, axis=0), out=self.lfc_min)
        np.maximum(self.lfc_max, np.maximum.reduce(lfc, axis=0), out=self.lfc_max)
        np.subtract(lfc, self.shift, out=lfc)
        self.lfc_sq += one @ np.square(lfc, out=lfc)

    def proba(self) -> np.ndarray:
        """The tested probability per gene: proba_de (change) or proba_m1 (vanilla)."""
        a, b = self.count_a / max(self.n, 1), self.count_b / max(self.n, 1)
        if self.mode == "vanilla":
            return a
        return np.maximum(a, b) if self.test_mode == "three" else a + b

    def mc_error(self) -> np.ndarray:
        """Monte-Carlo standard error of :meth:`proba` per gene, ``sqrt(p (1 - p) / n_pairs)``."""
        p = self.proba()
        return np.sqrt(p * (1.0 - p) / max(self.n, 1))

    def converged(self, tol: float) -> bool:
        """Whether every gene with posterior odds of at least 3 either way (proba outside
        (0.25, 0.75); the genes that rank high or are called) has a Monte-Carlo error <= ``tol``.
        Genes closer to even odds rank in the middle whatever their third digit."""
        p = self.proba()
        relevant = (p >= RELEVANT_ODDS / (1 + RELEVANT_ODDS)) | (p <= 1 / (1 + RELEVANT_ODDS))
        return bool((self.mc_error()[relevant] <= tol).all())

    def result(self) -> dict[str, np.ndarray]:
        n, p = max(self.n, 1), self.proba()
        out = {"scale1": self.scale1 / n, "scale2": self.scale2 / n}
        if self.mode == "vanilla":
            return {"proba_m1": p, "proba_m2": 1.0 - p, "bayes_factor": _log_odds(p), **out}
        mean, to_log2 = self.lfc_sum / n, 1.0 / np.log(2.0)
        return {
            "proba_de": p,
            "proba_not_de": 1.0 - p,
            "bayes_factor": _log_odds(p),
            **out,
            "lfc_mean": mean * to_log2,
            "lfc_median": self.lfc_median * to_log2,
            "lfc_std": np.sqrt(np.maximum(self.lfc_sq / n - (mean - self.shift) ** 2, 0.0)) * to_log2,
            "lfc_min": self.lfc_min * to_log2,
            "lfc_max": self.lfc_max * to_log2,
        }


def median_rows(x: np.ndarray) -> np.ndarray:
    """``np.median(x, axis=0)`` (float64, (n_cols,)) of a 2-D float array: each column laid out
    contiguously (torch's blocked transpose, 2x faster than NumPy's), then one partition at the lower
    middle, whose upper half's minimum is the upper middle. Several times faster than ``np.median``;
    NumPy's partition is vectorised for one kth and not for two (6x slower, measured)."""
    import torch

    cols = torch.from_numpy(np.asarray(x)).T.contiguous().numpy()
    n = cols.shape[1]
    k = (n - 1) // 2
    part = np.partition(cols, k, axis=1)
    low = part[:, k].astype(np.float64)
    high = low if n % 2 else part[:, k + 1 :].min(axis=1)
    return 0.5 * (low + high)
