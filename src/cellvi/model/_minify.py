"""Minified AnnData (scvi-tools' ``minify_adata``): keep each cell's latent posterior and library size,
drop the counts, so that a model and its data can be shared small and still give latents, normalised
expression, predictions and DE-style posterior samples.

The minified AnnData has the same cells, genes, obs and var; ``X`` (and the counts layer) become empty
sparse matrices; ``obsm[qzm_key]`` / ``obsm[qzv_key]`` hold the posterior mean and variance of z
(float32, (n_cells, n_latent)) and ``obs["observed_lib_size"]`` the total counts. Training and the
likelihood-based outputs (ELBO, reconstruction error, marginal likelihood) need the counts and refuse.
"""

from __future__ import annotations

import anndata
import numpy as np
import scipy.sparse as sp

from ..data.registry import MINIFIED_KEY
from ..errors import InvalidParameterError, NotSetUpError

LATENT_POSTERIOR = "latent_posterior_parameters"
LIB_KEY = "observed_lib_size"


def minify(model, minified_data_type: str, qzm_key: str, qzv_key: str) -> None:
    if minified_data_type != LATENT_POSTERIOR:
        raise InvalidParameterError(
            f"minified_data_type must be {LATENT_POSTERIOR!r} (the only kind cellvi implements), got "
            f"{minified_data_type!r}."
        )
    if model.minified_data_type is not None:
        raise InvalidParameterError("The model's AnnData is already minified.")
    if not model.init_params.get("use_observed_lib_size", True) or model.registry.setup_args["size_factor_key"]:
        raise InvalidParameterError(
            "minify_adata needs a model with use_observed_lib_size=True and no size_factor_key (the library "
            "size is then each cell's total count, which is kept)."
        )
    if not model.is_trained:
        raise NotSetUpError("Train the model before minifying its AnnData: the latent posterior is what is kept.")
    old = model.adata
    qzm, qzv = model.get_latent_representation(old, return_dist=True)
    data = model._cell_data()
    totals = np.zeros(old.n_obs, dtype=np.float64)
    from ..data.matrix import iter_row_chunks

    start = 0
    for chunk in iter_row_chunks(data.X):
        lib = np.asarray(chunk.sum(axis=1)).ravel()
        totals[start : start + len(lib)] = lib
        start += len(lib)
    empty = sp.csr_matrix(old.shape, dtype=np.float32)
    layer = model.registry.setup_args["layer"]
    mini = anndata.AnnData(
        X=empty,
        obs=old.obs.copy(),
        var=old.var.copy(),
        uns=dict(old.uns),
        obsm={k: v for k, v in old.obsm.items()},
        layers={k: (empty.copy() if k == layer else v) for k, v in old.layers.items()},
    )
    mini.obsm[qzm_key], mini.obsm[qzv_key] = qzm, qzv
    mini.obs[LIB_KEY] = totals
    mini.uns[MINIFIED_KEY] = LATENT_POSTERIOR
    registry = model.registry
    registry.setup_args.update(
        minified_data_type=LATENT_POSTERIOR,
        latent_qzm_key=qzm_key,
        latent_qzv_key=qzv_key,
        observed_lib_size_key=LIB_KEY,
    )
    registry.attach(mini)
    model.adata = mini
    model._data_cache = None


def refuse_if_minified(model, what: str) -> None:
    if model.minified_data_type is not None:
        raise InvalidParameterError(
            f"{what} needs the counts, which a minified AnnData no longer holds (minify_adata kept only the "
            "latent posterior). Use the full AnnData: load the model with it, or pass adata=."
        )
