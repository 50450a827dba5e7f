"""The outputs every model shares: the latent, the ELBO and its parts, and streaming them to a file.

Mixed into :class:`cellvi.model.base.BaseModel`, which provides the data helpers used here (``_batches``,
``_my_cells``, ``_n_cells``) and the module; under torchrun each rank computes its share of the cells
and the results come back in cell order.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from ..data.writers import write_rows
from ..errors import InvalidParameterError, MissingKeyError
from ..train import distributed

if TYPE_CHECKING:
    from collections.abc import Iterator

    from ..data import Registry
    from ..module import VAE


class InferenceMixin:
    """Latent representation, ELBO, reconstruction error and marginal likelihood of a model's cells."""

    if TYPE_CHECKING:
        _latent_key: str
        adata: Any
        registry: Registry
        module: VAE

        def _batches(
            self, adata=None, indices=None, batch_size=None, likelihood_terms=False, sparse_counts=False
        ) -> Iterator[dict]: ...
        def _my_cells(self, adata=None, indices=None) -> np.ndarray | None: ...
        def _n_cells(self, adata=None, indices=None) -> int: ...

    def get_latent_representation(
        self,
        adata=None,
        indices=None,
        give_mean: bool = True,
        mc_samples: int = 200,
        batch_size: int | None = None,
        return_dist: bool = False,
        obsm_key: str | None = "default",
    ):
        """Latent representation of each cell, (n_cells, n_latent) float32.

        give_mean: the posterior mean (True) or one posterior sample (False); for a logistic-normal
        latent the mean is estimated from ``mc_samples`` draws. return_dist: return instead the mean and
        variance of the Gaussian posterior, a tuple of two (n_cells, n_latent) arrays (as scvi-tools).
        obsm_key: when all cells are asked for (``indices=None``), the result is also stored in
        ``adata.obsm[obsm_key]`` (default ``"X_scvi"`` for SCVI, ``"X_scanvi"`` for SCANVI) so that
        ``sc.pp.neighbors(adata, use_rep="X_scvi")`` works directly. Pass ``obsm_key=None`` not to
        store. A view of an AnnData is never written to (that would turn it into a copy): a warning
        says so, and the result is only returned.
        """
        _check_positive("mc_samples", mc_samples)
        mine = self._my_cells(adata, indices)
        if mine is not None:  # under torchrun: each rank its share, then all of them, in order, on every rank
            with distributed.local():
                local = self.get_latent_representation(
                    adata,
                    mine,
                    give_mean=give_mean,
                    mc_samples=mc_samples,
                    batch_size=batch_size,
                    return_dist=return_dist,
                    obsm_key=None,
                )
            if return_dist:
                return tuple(distributed.gather_rows(part) for part in local)
            out = distributed.gather_rows(local)
            self._store_latent(adata, indices, obsm_key, out)
            return out
        n = self._n_cells(adata, indices)
        out = np.empty((n, self.module.n_latent), dtype=np.float32)
        var = np.empty_like(out) if return_dist else None
        pos = 0
        for batch in self._batches(adata, indices, batch_size, sparse_counts=True):
            if var is not None:  # return_dist
                m, v = self.module.latent_distribution_parameters(batch)
                out[pos : pos + len(m)], var[pos : pos + len(m)] = m.cpu().numpy(), v.cpu().numpy()
                pos += len(m)
                continue
            z = self.module.latent(batch, give_mean=give_mean, mc_samples=mc_samples).cpu().numpy()
            out[pos : pos + len(z)] = z
            pos += len(z)
        if return_dist:
            return out, var
        self._store_latent(adata, indices, obsm_key, out)
        return out

    def get_latent_library_size(
        self, adata=None, indices=None, give_mean: bool = True, batch_size: int | None = None
    ) -> np.ndarray:
        """Each cell's library size l in counts, (n_cells, 1) float32, as scvi-tools' method: with a latent
        library, the mean of q(l | x) (``give_mean``) or one sample of it; with the observed library
        (the default model), the cell's total counts (or size factor). scvi-tools raises there unless
        ``give_mean=False``; the observed total is its own mean, so cellvi returns it either way."""
        parts = [
            self.module.library_size(batch, give_mean).cpu().numpy()
            for batch in self._batches(adata, indices, batch_size, sparse_counts=True)
        ]
        return np.concatenate(parts).astype(np.float32)

    def differential_abundance(
        self,
        adata=None,
        sample_key: str | None = None,
        batch_size: int | None = None,
        num_cells_posterior: int | None = None,
        dof: float | None = None,
        seed: int = 0,
    ) -> pd.DataFrame:
        """Log density of each cell's latent mean under each sample's aggregated posterior (scvi-tools'
        call; :mod:`cellvi.analysis.abundance`): a DataFrame (cells x samples, nats), also stored in
        ``adata.obsm["da_log_probs"]``. A cell state that sample A has more of than sample B scores
        higher under A. sample_key: the ``adata.obs`` column of samples; num_cells_posterior: at most
        this many cells (drawn with ``seed``) make each sample's mixture; dof: Student-t components
        instead of Gaussians. Each component is q(z | x) with its own standard deviation (scvi-tools
        1.4.2 passes the variance as the scale, which makes components too narrow where it is below 1)."""
        from ..analysis.abundance import mixture_log_density

        adata = self.adata if adata is None else adata
        if sample_key is None or sample_key not in adata.obs.columns:
            raise MissingKeyError(
                f"differential_abundance needs sample_key, a column of adata.obs; got {sample_key!r}. "
                f"Columns: {list(adata.obs.columns)}."
            )
        if num_cells_posterior is not None:
            _check_positive("num_cells_posterior", num_cells_posterior)
        means, variances = self.get_latent_representation(adata, return_dist=True, batch_size=batch_size)
        rng = np.random.default_rng(seed)
        samples = adata.obs[sample_key].to_numpy()
        columns = {}
        for name in pd.unique(samples):
            rows = np.flatnonzero(samples == name)
            if num_cells_posterior is not None and len(rows) > num_cells_posterior:
                rows = np.sort(rng.choice(rows, num_cells_posterior, replace=False))
            columns[name] = mixture_log_density(means, means[rows], variances[rows], dof)
        out = pd.DataFrame(columns, index=adata.obs_names)
        if adata.is_view:
            warnings.warn("adata is a view: obsm['da_log_probs'] was not stored (returned only).", stacklevel=2)
        else:
            adata.obsm["da_log_probs"] = out
        return out

    def _store_latent(self, adata, indices, obsm_key, out: np.ndarray) -> None:
        """Store a latent of all cells in ``obsm`` (see get_latent_representation); never on a view."""
        if obsm_key is None or indices is not None:
            return
        target = self.adata if adata is None else adata
        key = self._latent_key if obsm_key == "default" else obsm_key
        if target.is_view:
            warnings.warn(
                f"The AnnData is a view: the latent is returned but not stored in obsm[{key!r}] (storing "
                "would turn the view into a copy). Store it yourself on the parent, or pass a copy.",
                UserWarning,
                stacklevel=3,
            )
        else:
            target.obsm[key] = out

    def write_latent(
        self,
        path,
        adata=None,
        indices=None,
        give_mean: bool = True,
        batch_size: int | None = None,
        obsm_key: str = "default",
        overwrite: bool = False,
    ) -> str:
        """Write the latent representation to ``obsm[obsm_key]`` of the .h5ad ``path``, minibatch by
        minibatch, never holding all cells in memory (for backed or zarr data as for in-memory data).

        ``path`` is created (obs of the cells, the model's genes as var, no X) or, if it exists (for
        example from ``write_normalized_expression``), must hold the same cells; it cannot be the input
        file. Read it back with ``anndata.read_h5ad(path, backed="r").obsm[key]``. Returns ``path``.
        """
        key = self._latent_key if obsm_key == "default" else obsm_key
        mine = self._my_cells(adata, indices)  # under torchrun: each rank its share, rank 0 writes
        batches = self._batches(adata, indices if mine is None else mine, batch_size, sparse_counts=True)
        blocks = (self.module.latent(b, give_mean=give_mean).cpu().numpy() for b in batches)
        return self._write_rows(path, "obsm", key, blocks, self.module.n_latent, adata, indices, overwrite)

    def _write_rows(self, path, group, key, blocks, n_cols, adata, indices, overwrite) -> str:
        """Stream row blocks of the cells ``indices`` of ``adata`` to ``path`` (see :func:`write_rows`).
        Under torchrun, ``blocks`` are this rank's share's (:meth:`_my_cells`): rank 0 writes them all."""
        adata = self.adata if adata is None else adata
        obs = adata.obs if indices is None else adata.obs.iloc[np.asarray(indices)]
        source = getattr(adata, "filename", None)
        blocks = distributed.rows_to_main(blocks)
        if not distributed.world().main:
            for _ in blocks:  # sends this rank's blocks to rank 0
                pass
        distributed.on_main(
            lambda: write_rows(path, group, key, blocks, n_cols, obs, self.registry.var_names, source, overwrite)
        )
        return str(path)

    def _over_cells(self, per_batch, adata, indices, batch_size, return_mean: bool = True):
        """The mean over cells of ``per_batch``'s per-cell values (a float), or with ``return_mean=False``
        the values themselves, (n_cells,) float64 in cell order."""
        from ._minify import refuse_if_minified

        if adata is None:
            refuse_if_minified(self, "The ELBO, reconstruction error and marginal likelihood")
        mine = self._my_cells(adata, indices)  # under torchrun: each rank its share, summed over ranks
        batches = self._batches(adata, indices if mine is None else mine, batch_size, likelihood_terms=True)
        if not return_mean:
            parts = [per_batch(batch).double().cpu().numpy() for batch in batches]
            return distributed.gather_rows(np.concatenate(parts) if parts else np.zeros(0))
        total, n = 0.0, 0
        for batch in batches:
            values = per_batch(batch)
            total += float(values.double().sum())
            n += len(values)
        total, n = distributed.sum_over_ranks(torch.tensor([total, n], dtype=torch.float64)).tolist()
        return total / max(n, 1)

    def get_elbo(self, adata=None, indices=None, batch_size: int | None = None, return_mean: bool = True):
        """Mean evidence lower bound per cell (nats; higher is better), at one posterior sample; with
        ``return_mean=False`` each cell's, (n_cells,) float64."""

        def elbo(batch):
            t = self.module.elbo_terms(batch)
            return -(t["reconstruction_loss"] + t["kl_z"] + t["kl_l"])

        return self._over_cells(elbo, adata, indices, batch_size, return_mean)

    def get_reconstruction_error(
        self, adata=None, indices=None, batch_size: int | None = None, return_mean: bool = True
    ) -> dict:
        """Mean reconstruction loss per cell, ``-log p(x | z, l)`` in nats (lower is better), as
        ``{"reconstruction_loss": value}``; with ``return_mean=False`` the value is each cell's, (n_cells,)."""
        value = self._over_cells(
            lambda b: self.module.elbo_terms(b)["reconstruction_loss"], adata, indices, batch_size, return_mean
        )
        return {"reconstruction_loss": value}

    def get_marginal_ll(
        self,
        adata=None,
        indices=None,
        n_mc_samples: int = 1000,
        batch_size: int | None = None,
        return_mean: bool = True,
    ):
        """Mean per cell of log p(x) (nats; higher is better), by importance sampling with
        ``n_mc_samples`` draws from the approximate posterior; with ``return_mean=False`` each cell's,
        (n_cells,) float64."""
        _check_positive("n_mc_samples", n_mc_samples)
        return self._over_cells(
            lambda b: self.module.marginal_ll(b, n_mc_samples), adata, indices, batch_size or 256, return_mean
        )


def _check_positive(name: str, value) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise InvalidParameterError(f"{name} must be a positive integer, got {value!r}.")
