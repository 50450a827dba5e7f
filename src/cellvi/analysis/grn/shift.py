"""In-silico perturbation: propagation through the GRN, sparse transitions, shift vectors, grid, score.

Everything here is O(cells x k) in memory (k nearest neighbours on the embedding); no cells x cells
matrix is ever formed, unlike CellOracle/velocyto's dense correlation and transition matrices.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

__all__ = [
    "embedding_shift",
    "grid_field",
    "knn",
    "perturbation_score",
    "propagate",
    "pseudotime_gradient",
    "transition_matrix",
]


def propagate(
    X: np.ndarray, C: sp.spmatrix, perturb_idx: np.ndarray, values: np.ndarray, n_propagation: int = 3
) -> np.ndarray:
    """Simulated expression change (n, G) of cells ``X`` (n, G) when the genes ``perturb_idx`` are set to
    ``values`` (CellOracle's ``_do_simulation``): ``delta <- delta @ C`` ``n_propagation`` times, the
    perturbed genes reset to their input change after each step, and ``X + delta`` clipped at 0."""
    X = np.asarray(X, dtype=np.float32)
    d_in = np.zeros_like(X)
    d_in[:, perturb_idx] = np.asarray(values, dtype=np.float32)[None, :] - X[:, perturb_idx]
    delta = d_in.copy()
    C = sp.csr_matrix(C, dtype=np.float32)
    for _ in range(n_propagation):
        # only genes that changed and regulate something contribute: delta[:, a] @ C[a] (a few columns
        # after the first steps, instead of the whole (n, G) x (G, G) product)
        active = np.flatnonzero((C.getnnz(axis=1) > 0) & np.any(delta != 0, axis=0))
        new = np.zeros_like(delta)
        if len(active):
            new[:] = (C[active].T.tocsr() @ np.ascontiguousarray(delta[:, active].T)).T
        delta = new
        delta[:, perturb_idx] = d_in[:, perturb_idx]
        np.maximum(delta, -X, out=delta)  # X + delta >= 0
    return delta


def knn(embedding: np.ndarray, k: int = 30) -> np.ndarray:
    """Indices (n, k) of each cell's k nearest other cells on ``embedding`` (n, d) (scikit-learn)."""
    from sklearn.neighbors import NearestNeighbors

    k = min(k, len(embedding) - 1)
    nn = NearestNeighbors(n_neighbors=k + 1).fit(embedding)
    idx = nn.kneighbors(embedding, return_distance=False)
    # drop each cell itself (normally the first; with duplicates anywhere in the row)
    self_col = idx == np.arange(len(idx))[:, None]
    no_self = ~self_col.any(1)
    self_col[no_self, -1] = True
    return idx[~self_col].reshape(len(idx), k).astype(np.int64)


def transition_matrix(
    X: np.ndarray,
    delta: np.ndarray,
    nbrs: np.ndarray,
    sigma_corr: float = 0.05,
    genes: np.ndarray | None = None,
    chunk: int | None = None,
) -> tuple[sp.csr_matrix, np.ndarray]:
    """Transition probabilities over each cell's neighbours, sparse (n, n) CSR with k entries per row.

    ``p_ij ∝ exp(corr(X_j - X_i, delta_i) / sigma_corr)`` (velocyto/CellOracle), Pearson correlation over
    ``genes`` (default all). A cell with no change (zero or constant ``delta_i``) gets uniform weights.
    Also returns ``strength`` (n,): ``||delta_i|| / mean_j ||X_j - X_i||``, how far the perturbation moves
    the cell relative to the distance to its neighbours. Row i of the matrix stores its entries in the
    order of ``nbrs[i]`` (``T.data.reshape(n, k)`` are the probabilities of ``nbrs``). Cells are processed
    ``chunk`` at a time (default: ~2e7 floats of neighbour differences, ~80 MB).
    """
    n, k = nbrs.shape
    chunk = chunk or max(16, int(2e7 // max(k * X.shape[1], 1)))
    vals = np.empty((n, k), dtype=np.float32)
    strength = np.empty(n, dtype=np.float32)
    Xt = torch.from_numpy(np.asarray(X, dtype=np.float32))
    keep = gene_mask(Xt.shape[1], genes)
    nb = torch.from_numpy(nbrs)
    for lo in range(0, n, chunk):
        hi = min(lo + chunk, n)
        d = torch.from_numpy(np.ascontiguousarray(delta[lo:hi], dtype=np.float32))
        P, st = transition_block(Xt[nb[lo:hi]], Xt[lo:hi], d, keep, sigma_corr)
        vals[lo:hi], strength[lo:hi] = P, st
    indptr = np.arange(0, n * k + 1, k)
    T = sp.csr_matrix((vals.ravel(), nbrs.ravel(), indptr), shape=(n, n))
    return T, strength


def spatial_order(embedding: np.ndarray, bits: int = 10) -> np.ndarray:
    """Permutation (n,) sorting points of a 2-D ``embedding`` (n, >=2) along a Z-order (Morton) curve on a
    ``2**bits`` grid: consecutive points are close, so a block of them has overlapping neighbourhoods."""
    e = np.asarray(embedding[:, :2], dtype=np.float64)
    span = np.ptp(e, axis=0)
    q = ((e - e.min(0)) / np.where(span > 0, span, 1.0) * (2**bits - 1)).astype(np.uint64)

    def spread(v):  # the bits of v moved to the even positions
        out = np.zeros_like(v)
        for b in range(bits):
            out |= ((v >> np.uint64(b)) & np.uint64(1)) << np.uint64(2 * b)
        return out

    return np.argsort(spread(q[:, 0]) | (spread(q[:, 1]) << np.uint64(1)), kind="stable")


def gene_mask(n_genes: int, genes: np.ndarray | None) -> torch.Tensor:
    """(G,) bool mask of the genes the correlation uses (all when ``genes`` is None)."""
    keep = torch.ones(n_genes, dtype=torch.bool)
    if genes is not None:
        keep[:] = False
        keep[torch.from_numpy(np.asarray(genes, dtype=np.int64))] = True
    return keep


def transition_block(
    Xn: torch.Tensor, xi: torch.Tensor, d: torch.Tensor, keep: torch.Tensor, sigma_corr: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """Transition probabilities (b, k) and strengths (b,) of b cells: ``Xn`` (b, k, G) their neighbours'
    expression, ``xi`` (b, G) theirs, ``d`` (b, G) their simulated change, ``keep`` (G,) genes used.

    corr(x_j - x_i, d) from dot products only (no (b, k, G) difference array): with dc = d - mean(d),
    num = x_j.dc - x_i.dc and ||centred(x_j - x_i)||^2 = |x_j|^2 + |x_i|^2 - 2 x_i.x_j - g (m_j - m_i)^2;
    genes left out get dc = 0 and their terms subtracted from the sums over all genes."""
    out = torch.nonzero(~keep).squeeze(1)
    g = int(keep.sum())

    def sq_mean(A):  # squared norm and mean over the kept genes, last axis
        o = A[..., out]
        return (A * A).sum(-1) - (o * o).sum(-1), (A.sum(-1) - o.sum(-1)) / g

    sq_n, mean_n = sq_mean(Xn)
    sq_i, mean_i = sq_mean(xi)
    d = d * keep
    dc = (d - d.sum(1, keepdim=True) / g) * keep
    num = torch.bmm(Xn, dc.unsqueeze(2)).squeeze(2) - (xi * dc).sum(1, keepdim=True)
    cross = torch.bmm(Xn, xi.unsqueeze(2)).squeeze(2)
    if len(out):
        cross -= (Xn[:, :, out] * xi[:, None, out]).sum(2)
    sq_d = (sq_n + sq_i[:, None] - 2 * cross).clamp_min(0)  # ||x_j - x_i||^2 on kept genes
    var_d = (sq_d - g * (mean_n - mean_i[:, None]) ** 2).clamp_min(0)
    den = torch.sqrt(var_d * (dc * dc).sum(1, keepdim=True))
    corr = torch.where(den > 0, num / den.clamp_min(1e-30), torch.zeros_like(num))
    P = torch.softmax(corr.double() / sigma_corr, dim=1)
    dist = torch.sqrt(sq_d).mean(1)
    dn = torch.linalg.vector_norm(d, dim=1)
    strength = torch.where(dist > 0, dn / dist.clamp_min(1e-30), torch.zeros_like(dn))
    return P.numpy().astype(np.float32), strength.numpy()


def embedding_shift(
    T: sp.csr_matrix, embedding: np.ndarray, nbrs: np.ndarray, strength: np.ndarray | None = None
) -> np.ndarray:
    """Per-cell shift (n, d) on the embedding: ``sum_j p_ij u_ij - mean_j u_ij`` with ``u_ij`` the unit
    vector from cell i to neighbour j (CellOracle's ``calculate_embedding_shift``). With ``strength``,
    each vector is scaled by ``min(strength_i, 1)`` so that a perturbation that barely changes a cell
    barely moves it (cellvi's addition: the correlation alone is blind to the size of the change)."""
    n, k = nbrs.shape
    U = embedding[nbrs] - embedding[:, None, :]  # (n, k, d)
    norm = np.linalg.norm(U, axis=2, keepdims=True)
    U = np.divide(U, norm, out=np.zeros_like(U), where=norm > 0)
    P = T.data.reshape(n, k)  # as built by transition_matrix: row i's entries in the order of nbrs[i]
    v = np.einsum("nk,nkd->nd", P, U) - U.mean(1)
    if strength is not None:
        v *= np.minimum(strength, 1.0)[:, None]
    return v.astype(np.float32)


def pseudotime_gradient(
    embedding: np.ndarray, pseudotime: np.ndarray, nbrs: np.ndarray, ridge: float = 1e-6
) -> np.ndarray:
    """Unit pseudotime gradient (n, d) at every cell: the local least-squares slope of pseudotime over
    each cell's neighbours on the embedding (the developmental direction; 0 where flat)."""
    D = embedding[nbrs] - embedding[:, None, :]  # (n, k, d)
    dt = pseudotime[nbrs] - pseudotime[:, None]  # (n, k)
    A = np.einsum("nkd,nke->nde", D, D)
    A += ridge * np.trace(A, axis1=1, axis2=2)[:, None, None] / A.shape[1] * np.eye(A.shape[1]) + 1e-12 * np.eye(
        A.shape[1]
    )
    g = np.linalg.solve(A, np.einsum("nkd,nk->nd", D, dt)[..., None])[..., 0]
    norm = np.linalg.norm(g, axis=1, keepdims=True)
    return np.divide(g, norm, out=np.zeros_like(g), where=norm > 0)


def perturbation_score(shift: np.ndarray, gradient: np.ndarray) -> np.ndarray:
    """Inner product of shift and developmental vectors, per cell or per grid point (CellOracle's
    perturbation score): negative where the perturbation pushes cells back along the trajectory."""
    return np.einsum("nd,nd->n", shift, gradient)


def grid_field(
    embedding: np.ndarray,
    vectors: np.ndarray,
    steps: int = 40,
    smooth: float = 0.8,
    n_neighbors: int = 100,
    min_mass: float = 0.05,
) -> dict:
    """Gaussian-kernel average of per-cell ``vectors`` (n, d, d=2) on a ``steps x steps`` grid over the
    embedding (CellOracle's ``calculate_grid_arrows``; kernel sd = ``smooth`` x grid spacing).
    Returns ``points`` (m, 2), ``vectors`` (m, 2), ``mass`` (m,) and ``mask`` (m,) of points whose kernel
    mass is at least ``min_mass`` x the largest (points far from any cell are dropped)."""
    from sklearn.neighbors import NearestNeighbors

    lo, hi = embedding.min(0), embedding.max(0)
    axes = [np.linspace(lo[i], hi[i], steps) for i in range(2)]
    points = np.stack(np.meshgrid(*axes, indexing="xy"), -1).reshape(-1, 2)
    spacing = float(np.mean([(a[1] - a[0]) if steps > 1 else 1.0 for a in axes]))
    k = min(n_neighbors, len(embedding))
    dist, idx = NearestNeighbors(n_neighbors=k).fit(embedding).kneighbors(points)
    w = np.exp(-0.5 * (dist / (smooth * spacing)) ** 2)
    mass = w.sum(1)
    out = np.einsum("mk,mkd->md", w, vectors[idx]) / np.maximum(mass, 1e-12)[:, None]
    mask = mass >= min_mass * mass.max() if mass.max() > 0 else np.zeros(len(mass), bool)
    return {"points": points, "vectors": out, "mass": mass, "mask": mask, "steps": steps}
