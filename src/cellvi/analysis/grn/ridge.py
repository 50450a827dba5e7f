"""Bagging ridge regression of every target gene on its candidate regulators, all targets at once.

For one cluster with expression ``X`` (n cells, G genes), each target ``g`` is regressed on its allowed
regulators (standardised within the cluster, with an intercept) by ridge regression with penalty
``alpha``: the same model as CellOracle's ``BaggingRegressor(Ridge(alpha), n_estimators=B,
bootstrap=True, max_features=feature_fraction)``. Each of the ``B`` bootstraps resamples the cells
(multinomial weights) and keeps a random ``feature_fraction`` of the regulators. Instead of one scikit-learn
model per target and bootstrap, every bootstrap's normal equations are formed once in torch:

* when every target may use every regulator but itself (TF list, all genes), one Cholesky factorisation
  of ``Z_R' W Z_R + alpha I`` per bootstrap solves all targets as right-hand sides; a target that is itself
  a regulator has that variable removed exactly by the Schur complement
  ``beta' = beta - H[:, j] beta_j / H[j, j]`` (``H`` the inverse of the system matrix);
* otherwise (a base GRN: a different regulator set per target) the targets' systems are gathered into a
  padded batch ``(targets, k, k)`` and solved with one batched ``torch.linalg.solve``.

Per edge the bootstrap coefficients give the mean, and a two-sided one-sample t-test against 0 (as
CellOracle does with ``scipy.stats.ttest_1samp``) gives its p-value (``pvalue="celloracle"``); the
default treats the bootstrap sd as the coefficient's standard error (see :func:`bagging_ridge`). Only running sums are kept, so memory is
O(R x G) whatever ``B`` is.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import stats

from ...errors import InvalidDataError, InvalidParameterError

__all__ = ["bagging_ridge"]


def _device(device) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _column_sd(X: torch.Tensor) -> torch.Tensor:
    """Standard deviation of each column (1 where constant)."""
    sd = X.std(0)
    return torch.where(sd > 1e-8, sd, torch.ones_like(sd))


def _standardise(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """z-scores per column (constant columns become 0) and the standard deviations (1 where constant)."""
    sd = _column_sd(X)
    return (X - X.mean(0)) / sd, sd


def normal_scores(X: np.ndarray) -> np.ndarray:
    """(n, G) -> (n, G) float32: each column's values replaced by the standard normal quantiles of their
    ranks, ``Phi^-1((rank - 1/2) / n)`` (ties share their mean rank; a constant column becomes 0)."""
    X = np.asarray(X)
    n = X.shape[0]
    return stats.norm.ppf((stats.rankdata(X, axis=0) - 0.5) / n).astype(np.float32)


def _block_moments(blocks) -> tuple[np.ndarray, np.ndarray]:
    """Column means and standard deviations (ddof 1; 1 where constant) over row blocks, one pass."""
    n, s, ss = 0, 0.0, 0.0
    for x in blocks:
        x = np.asarray(x, dtype=np.float64)
        n, s, ss = n + len(x), s + x.sum(0), ss + (x * x).sum(0)
    mean = s / n
    sd = np.sqrt(np.maximum(ss - n * mean * mean, 0) / max(n - 1, 1))
    return mean, np.where(sd > 1e-8, sd, 1.0)


def _standardised(blocks, mean: np.ndarray, sd: torch.Tensor, dev):
    """Yield consecutive standardised row blocks (float32 tensors)."""
    m = torch.as_tensor(mean, device=dev, dtype=torch.float32)
    for x in blocks:
        yield (torch.as_tensor(np.asarray(x, dtype=np.float32), device=dev) - m) / sd


def _normal_equations(parts, ws, ri, n):
    """Weighted, centred normal equations ``(Z_R' W Z_R, Z_R' W Z)`` (float64) for each weight vector of
    ``ws`` (n,), over consecutive standardised row blocks ``parts`` (products in float32 per block)."""
    dt = torch.float64
    acc = None
    lo = 0
    for Zb in parts:
        ZR = Zb[:, ri]
        if acc is None:
            R, G = ZR.shape[1], Zb.shape[1]
            acc = [
                [torch.zeros(R, dtype=dt, device=Zb.device), torch.zeros(G, dtype=dt, device=Zb.device)]
                + [torch.zeros((R, R), dtype=dt, device=Zb.device), torch.zeros((R, G), dtype=dt, device=Zb.device)]
                for _ in ws
            ]
        for a, w in zip(acc, ws):
            wb = w[lo : lo + len(Zb)]
            WR = ZR * wb[:, None]
            a[0] += (wb @ ZR).to(dt)
            a[1] += (wb @ Zb).to(dt)
            a[2] += (ZR.T @ WR).to(dt)
            a[3] += (WR.T @ Zb).to(dt)
        lo += len(Zb)
    out = []
    for sr, st, GR, CR in acc:
        # the intercept: weighted means (rounded to float32 as computed in one block)
        mu_r, mu_t = (sr / n).to(torch.float32).to(dt), (st / n).to(torch.float32).to(dt)
        out.append((GR - n * torch.outer(mu_r, mu_r), CR - n * torch.outer(mu_r, mu_t)))
    return out


def _shared_solve(G_b, c_b, keep, reg_pos_of_target, alpha):
    """All targets at once for one bootstrap. G_b (R, R), c_b (R, T); keep (R,) bool features of this
    bootstrap; reg_pos_of_target (T,) regulator position of each target (-1: not a regulator).
    Returns beta (R, T) (0 where unused) and present (R, T) bool."""
    R, T = c_b.shape
    f = torch.nonzero(keep).squeeze(1)
    A = G_b[f][:, f] + alpha * torch.eye(len(f), dtype=G_b.dtype, device=G_b.device)
    L = torch.linalg.cholesky(A)
    H = torch.cholesky_inverse(L)
    beta_f = H @ c_b[f]  # (F, T)
    pos_in_f = torch.full((R,), -1, dtype=torch.long, device=G_b.device)
    pos_in_f[f] = torch.arange(len(f), device=G_b.device)
    j = torch.where(reg_pos_of_target >= 0, pos_in_f[reg_pos_of_target.clamp_min(0)], -1)
    ts = torch.nonzero(j >= 0).squeeze(1)
    if len(ts):  # remove each self-regulating variable exactly (Schur complement)
        js = j[ts]
        beta_f[:, ts] -= H[:, js] * (beta_f[js, ts] / H[js, js])
        beta_f[js, ts] = 0.0
    beta = torch.zeros((R, T), dtype=G_b.dtype, device=G_b.device)
    beta[f] = beta_f
    present = torch.zeros((R, T), dtype=torch.bool, device=G_b.device)
    present[f] = True
    if len(ts):
        present[f[js], ts] = False
    return beta, present


def _padded_solve(G_b, c_b, keep, allowed, alpha, chunk):
    """Targets with their own regulator sets: (R, R), (R, T), (R,), (R, T) bool -> beta, present (R, T)."""
    R, T = c_b.shape
    dev, dt = G_b.device, G_b.dtype
    mask = allowed & keep[:, None]
    beta = torch.zeros((R, T), dtype=dt, device=dev)
    k = int(mask.sum(0).max()) if T else 0
    if k == 0:
        return beta, mask
    # regulator positions of each target, padded to k (sorted so that valid ones come first)
    order = torch.argsort((~mask).to(torch.int8), dim=0, stable=True)[:k].T  # (T, k)
    valid = torch.gather(mask.T, 1, order)  # (T, k)
    eye = torch.eye(k, dtype=dt, device=dev)
    for lo in range(0, T, chunk):
        idx, v = order[lo : lo + chunk], valid[lo : lo + chunk].to(dt)
        A = G_b[idx[:, :, None], idx[:, None, :]] * (v[:, :, None] * v[:, None, :])
        A = A + eye * (alpha * v + (1 - v))[:, None, :]
        t = torch.arange(lo, lo + len(idx), device=dev)
        rhs = c_b[idx, t[:, None]] * v
        sol = torch.linalg.solve(A, rhs.unsqueeze(-1)).squeeze(-1) * v
        beta[idx, t[:, None].expand_as(idx)] += sol  # padded entries add 0
    return beta, mask


def bagging_ridge(
    X: np.ndarray,
    reg_index: np.ndarray,
    allowed: np.ndarray,
    alpha: float = 10.0,
    n_bootstraps: int = 20,
    feature_fraction: float = 0.8,
    seed: int = 0,
    device=None,
    shared: bool | None = None,
    chunk: int = 256,
    pvalue: str = "bootstrap",
    acc_bytes: float = 512e6,
    transform: str = "none",
) -> dict:
    """Fit the bagging ridge GRN of one cluster.

    X: (n cells, G genes) expression of the cluster, an array, or row blocks (an iterable that can be
    iterated several times, yielding (b, G) arrays, with a ``shape``; e.g. :class:`~cellvi.analysis.grn.RowBlocks`),
    read once for the moments and once for the normal equations of all bootstraps (or once per bootstrap
    when those, ``B x R x (R + G)`` float64, exceed ``acc_bytes``), so the cluster is never dense; reg_index (R,): the regulators' gene positions;
    allowed (R, G) bool: which regulator may regulate which target. Returns numpy arrays (R, G):
    ``coef`` (mean standardised coefficient over the bootstraps that used the edge; NaN if none),
    ``coef_raw`` (the same in expression units: ``coef * sd_target / sd_regulator``, what a shift of the
    regulator by one unit does to the target), ``p`` (two-sided t-test p-value; NaN with < 2 uses),
    ``n`` (bootstraps that used the edge), ``z`` (bootstrap z-score ``mean / sd`` of the coefficients, signed;
    the statistic behind the default p-value, unbounded where p underflows; NaN with < 2 uses).

    pvalue: ``"bootstrap"`` (default): two-sided normal p-value of ``mean / sd`` of the bootstrap
    coefficients, the sd of the bootstrap distribution being the standard error of the coefficient;
    ``"celloracle"``: CellOracle's one-sample t-test of the B bootstrap coefficients against 0, whose
    standard error ``sd / sqrt(B)`` is that of the bootstrap *mean*, so it grows more significant with
    more bootstraps (about ``sqrt(B)`` times the z-score: anti-conservative; kept to compare).

    transform: ``"none"`` (default): the regression is on the expression, standardised;
    ``"normal_scores"``: on each gene's normal scores within the cluster (:func:`normal_scores`, a Gaussian
    copula), so that a monotone but switch-like response counts as much as a linear one. ``coef`` is then
    in normal-score units and ``coef_raw`` rescales it by the expression's standard deviations, a
    linearisation. Needs X as an array.
    """
    if transform not in ("none", "normal_scores"):
        raise InvalidParameterError(f"transform must be 'none' or 'normal_scores', got {transform!r}.")
    if transform == "normal_scores" and not (isinstance(X, np.ndarray) or torch.is_tensor(X)):
        raise InvalidParameterError(
            "transform='normal_scores' needs the cluster's expression in memory, not row blocks: "
            "not with chunked expression (Oracle(chunked=True), cellvi grn --chunked)."
        )
    if pvalue not in ("bootstrap", "celloracle"):
        raise InvalidParameterError(f"pvalue must be 'bootstrap' or 'celloracle', got {pvalue!r}.")
    n, G = X.shape
    if n < 3:
        raise InvalidDataError(f"a cluster needs at least 3 cells to fit a GRN, got {n}.")
    if not 0 < feature_fraction <= 1 or n_bootstraps < 2 or alpha < 0:
        raise InvalidParameterError("need 0 < feature_fraction <= 1, n_bootstraps >= 2 and alpha >= 0.")
    dev = _device(device)
    dt = torch.float64
    R = len(reg_index)
    ri = torch.as_tensor(np.asarray(reg_index), device=dev)
    if isinstance(X, np.ndarray) or torch.is_tensor(X):
        # the n x R x G products in float32 (the time); the small R x R systems and the sums in float64
        Xt = torch.as_tensor(X, device=dev, dtype=torch.float32)
        if transform == "normal_scores":  # regress the scores; sd of the expression for coef_raw
            Z, sd = _standardise(torch.as_tensor(normal_scores(Xt.cpu().numpy()), device=dev))[0], _column_sd(Xt)
        else:
            Z, sd = _standardise(Xt)
        blocks, mean_np = None, None
    else:  # row blocks (e.g. cellvi.analysis.grn.RowBlocks): standardised block by block
        blocks = X
        mean_np, sd_np = _block_moments(blocks)
        sd = torch.as_tensor(sd_np, device=dev, dtype=torch.float32)
    allowed_t = torch.as_tensor(allowed, device=dev)
    if shared is None:
        full = np.ones_like(allowed)
        full[np.arange(R), reg_index] = False
        shared = bool(np.array_equal(allowed, full))
    reg_pos = torch.full((G,), -1, dtype=torch.long, device=dev)
    reg_pos[ri] = torch.arange(R, device=dev)
    rng = np.random.default_rng(seed)
    n_keep = max(1, round(feature_fraction * R))
    s1 = torch.zeros((R, G), dtype=dt, device=dev)
    s2 = torch.zeros_like(s1)
    cnt = torch.zeros((R, G), dtype=torch.int32, device=dev)
    draws = []
    for _ in range(n_bootstraps):  # weights then features, bootstrap after bootstrap (fixed by the seed)
        w = torch.as_tensor(rng.multinomial(n, np.full(n, 1.0 / n)), device=dev, dtype=torch.float32)
        keep = torch.zeros(R, dtype=torch.bool, device=dev)
        keep[torch.as_tensor(rng.choice(R, n_keep, replace=False), device=dev)] = True
        draws.append((w, keep))
    # row blocks: read once, accumulating every bootstrap's equations, when they fit in acc_bytes;
    # else (and for an array, already in memory) one bootstrap at a time
    one_pass = blocks is not None and n_bootstraps * R * (R + G) * 8 <= acc_bytes
    if one_pass:
        systems = _normal_equations(_standardised(blocks, mean_np, sd, dev), [w for w, _ in draws], ri, n)
    for b, (w, keep) in enumerate(draws):
        if one_pass:
            G_b, c_b = systems[b]
        else:
            parts = [Z] if blocks is None else _standardised(blocks, mean_np, sd, dev)
            G_b, c_b = _normal_equations(parts, [w], ri, n)[0]
        if shared:
            beta, present = _shared_solve(G_b, c_b, keep, reg_pos, alpha)
        else:
            beta, present = _padded_solve(G_b, c_b, keep, allowed_t, alpha, chunk)
        s1 += beta
        s2 += beta * beta
        cnt += present.to(torch.int32)
    cnt_f = cnt.to(dt)
    mean = torch.where(cnt > 0, s1 / cnt_f.clamp_min(1), torch.nan)
    var = torch.where(cnt > 1, (s2 - cnt_f * mean * mean) / (cnt_f - 1).clamp_min(1), torch.nan).clamp_min(0)
    mean_np, var_np, n_np = mean.cpu().numpy(), var.cpu().numpy(), cnt.cpu().numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(n_np > 1, mean_np / np.sqrt(var_np), np.nan)
        if pvalue == "celloracle":
            p = 2 * stats.t.sf(np.abs(mean_np / np.sqrt(var_np / n_np)), np.maximum(n_np - 1, 1))
        else:
            p = 2 * stats.norm.sf(np.abs(mean_np / np.sqrt(var_np)))
    p = np.where(n_np > 1, np.where(var_np > 0, p, np.where(mean_np != 0, 0.0, 1.0)), np.nan)
    sd_np = sd.cpu().numpy()
    coef_raw = mean_np * sd_np[None, :] / sd_np[np.asarray(reg_index)][:, None]
    return {"coef": mean_np, "coef_raw": coef_raw, "p": p, "n": n_np, "z": z}
