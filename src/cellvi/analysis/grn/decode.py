"""The perturbation decoded through a trained scVI model (no peer has this).

The perturbed genes are set in each cell's *counts* (a knockout to 0; a value ``v`` of the analysis'
expression scale to the counts it means at the cell's library size), the model's encoder re-encodes the
cells, and each cell moves in the latent space by ``dz_i = z'_i - z_i``. The latent move becomes
transition probabilities over the same embedding neighbours as the GRN shift,
``p_ij ∝ exp(cos(z_j - z_i, dz_i) / sigma)``, and a shift vector on the embedding. This uses what the
model learned about how genes co-vary, not the fitted GRN, so it is an independent estimate: where the two
agree (cosine similarity of the per-cell shift vectors) the prediction has two kinds of support.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .shift import embedding_shift

__all__ = ["latent_shift", "shift_agreement"]


def _perturbed_counts(X, lib: np.ndarray, idx: np.ndarray, values: np.ndarray, to_counts) -> sp.csr_matrix:
    """Counts (n, G) CSR with the columns ``idx`` replaced by ``round(to_counts(value, library))``."""
    X = sp.csr_matrix(X, dtype=np.float32)
    n, G = X.shape
    keep = np.ones(G, dtype=np.float32)
    keep[idx] = 0.0
    cols = [np.maximum(np.rint(to_counts(np.full(n, float(v)), lib)), 0) for v in values]
    rows = np.tile(np.arange(n), len(idx))
    new = sp.csr_matrix((np.concatenate(cols).astype(np.float32), (rows, np.repeat(idx, n))), shape=(n, G))
    out = sp.csr_matrix(X @ sp.diags(keep) + new)
    out.eliminate_zeros()
    return out


def latent_shift(
    model,
    adata,
    perturb_idx,
    values,
    to_counts,
    nbrs,
    embedding,
    sigma: float = 0.05,
    layer=None,
    batch_size: int | None = None,
) -> dict:
    """Per-cell latent move and its embedding shift. ``to_counts(value, library) -> counts`` converts
    the analysis' expression scale to counts. Returns ``dz`` (n, n_latent), ``shift`` (n, 2),
    ``strength`` (n,) (``||dz_i|| / mean_j ||z_j - z_i||``)."""
    import anndata as ad

    X = adata.layers[layer] if layer is not None else adata.X
    lib = np.asarray(X.sum(axis=1)).ravel().astype(np.float64)
    z0 = model.get_latent_representation(adata, obsm_key=None, batch_size=batch_size)
    Xp = _perturbed_counts(X, lib, np.asarray(perturb_idx), np.asarray(values), to_counts)
    pert = ad.AnnData(X=Xp if layer is None else adata.X, obs=adata.obs, var=adata.var)
    if layer is not None:
        pert.layers[layer] = Xp
    z1 = model.get_latent_representation(pert, obsm_key=None, batch_size=batch_size)
    dz = z1 - z0
    D = z0[nbrs] - z0[:, None, :]  # (n, k, n_latent); n_latent is small
    dn = np.linalg.norm(D, axis=2)
    zn = np.linalg.norm(dz, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(dn * zn[:, None] > 0, np.einsum("nkl,nl->nk", D, dz) / (dn * zn[:, None]), 0.0)
        strength = np.where(dn.mean(1) > 0, zn / dn.mean(1), 0.0)
    logits = cos / sigma
    logits -= logits.max(1, keepdims=True)
    w = np.exp(logits)
    P = (w / w.sum(1, keepdims=True)).astype(np.float32)
    n, k = nbrs.shape
    T = sp.csr_matrix((P.ravel(), nbrs.ravel(), np.arange(0, n * k + 1, k)), shape=(n, n))
    shift = embedding_shift(T, embedding, nbrs, strength)
    return {"dz": dz, "shift": shift, "strength": strength.astype(np.float32)}


def shift_agreement(a: np.ndarray, b: np.ndarray, min_norm: float = 1e-6) -> dict:
    """Agreement of two per-cell shift fields (n, d): the cosine similarity per cell where both move
    (``cosine``, NaN elsewhere), its median and the fraction of moving cells with cosine > 0."""
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    moving = (na > min_norm) & (nb > min_norm)
    cos = np.full(len(a), np.nan, dtype=np.float32)
    cos[moving] = np.einsum("nd,nd->n", a[moving], b[moving]) / (na[moving] * nb[moving])
    return {
        "cosine": cos,
        "median_cosine": float(np.nanmedian(cos)) if moving.any() else float("nan"),
        "fraction_agree": float((cos[moving] > 0).mean()) if moving.any() else float("nan"),
        "n_moving": int(moving.sum()),
    }
