"""The expression outputs shared by SCVI and its variants: denoised and batch-corrected expression,
posterior-predictive counts and the likelihood's parameters, computed minibatch by minibatch through
the module (mixed into :class:`cellvi.model.SCVI`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from ..errors import InvalidParameterError, MissingKeyError
from ..train import distributed
from .base import _check_positive


class ExpressionMixin:
    """Denoised expression and samples of p(x | z); needs :class:`~cellvi.model.base.BaseModel`."""

    def _batch_codes(self, transform_batch) -> list[int | None]:
        if transform_batch is None:
            return [None]
        names = transform_batch if isinstance(transform_batch, (list, tuple)) else [transform_batch]
        known = self.registry.categories["batch"]
        codes: list[int | None] = []
        for name in names:
            if str(name) not in known:
                raise MissingKeyError(f"transform_batch {name!r} is not a batch of the model; batches: {known}.")
            codes.append(known.index(str(name)))
        return codes

    def _gene_mask(self, gene_list) -> np.ndarray:
        if gene_list is None:
            return np.arange(len(self.registry.var_names))
        pos = {g: i for i, g in enumerate(self.registry.var_names)}
        unknown = [g for g in gene_list if g not in pos]
        if unknown:
            raise MissingKeyError(f"Genes not in the model: {unknown[:5]}.")
        return np.array([pos[g] for g in gene_list])

    def get_normalized_expression(
        self,
        adata=None,
        indices=None,
        transform_batch=None,
        gene_list: Sequence[str] | None = None,
        library_size: float | str = 1,
        n_samples: int = 1,
        batch_size: int | None = None,
        return_mean: bool = True,
        return_numpy: bool = False,
    ) -> pd.DataFrame | np.ndarray:
        """Denoised expression, (n_cells, n_genes): the decoder's expected expression per cell.

        library_size: a number (default 1: proportions that sum to 1 per cell; 1e4 gives counts per
        10,000) or "latent" (expected counts at each cell's own library size).
        transform_batch: None decodes each cell in its own batch (not batch-corrected). A batch name
        decodes every cell as if measured in that batch; a list of batch names averages over them.
        **For batch-corrected expression** use :meth:`get_batch_corrected_expression` (all batches
        averaged) or pass ``transform_batch=<reference batch>``.
        n_samples: posterior samples of z averaged (``return_mean``) or returned as
        (n_samples, n_cells, n_genes). Computed minibatch by minibatch into one float32 result.
        Returns a DataFrame (cells x genes) unless ``return_numpy``.
        """
        genes = self._gene_mask(gene_list)
        mine = self._my_cells(adata, indices)
        if mine is not None:  # under torchrun: each rank its share, then all of them, in order, on every rank
            with distributed.local():
                local = self.get_normalized_expression(
                    adata, mine, transform_batch, gene_list, library_size, n_samples, batch_size, return_mean, True
                )
            out = distributed.gather_rows(local, axis=0 if return_mean else 1)
            return self._expression_frame(out, adata, indices, genes, return_mean, return_numpy)
        n = self._n_cells(adata, indices)
        # torch's allocator, not numpy's: numpy asks the kernel for huge pages, whose first allocation
        # in a process stalled for 40-90 ms on a 40 MB result here (page compaction)
        out = torch.empty((n, len(genes)) if return_mean else (n_samples, n, len(genes))).numpy()
        blocks = self._normalized_blocks(
            adata, indices, transform_batch, genes, library_size, n_samples, batch_size, return_mean, out
        )
        for _ in blocks:  # each block is written into its rows of out
            pass
        return self._expression_frame(out, adata, indices, genes, return_mean, return_numpy)

    def _expression_frame(self, out, adata, indices, genes, return_mean, return_numpy):
        if return_numpy or not return_mean:
            return out
        obs_names = (self.adata if adata is None else adata).obs_names
        if indices is not None:
            obs_names = obs_names[np.asarray(indices)]
        return pd.DataFrame(out, index=obs_names, columns=np.asarray(self.registry.var_names)[genes], copy=False)

    def _normalized_blocks(
        self, adata, indices, transform_batch, genes, library_size, n_samples, batch_size, return_mean, out=None
    ) -> Iterator[np.ndarray]:
        """Normalized expression minibatch by minibatch, in cell order: float32 (b, len(genes)), or
        (n_samples, b, len(genes)) unless ``return_mean`` (see :meth:`get_normalized_expression`).
        ``out``: the whole result (float32 numpy); when given, every block is written into its rows of
        ``out`` (computed there directly in the common case) and those rows are what is yielded."""
        _check_positive("n_samples", n_samples)
        latent_library = library_size == "latent"
        if not latent_library and not (isinstance(library_size, (int, float)) and library_size > 0):
            raise InvalidParameterError(f"library_size must be a positive number or 'latent', got {library_size!r}.")
        codes = self._batch_codes(transform_batch)
        all_genes = len(genes) == self.module.n_input and bool(np.all(genes == np.arange(len(genes))))
        direct = n_samples == 1 and len(codes) == 1 and all_genes  # the common case: one decoding, all genes

        def decode(batch, rows) -> np.ndarray:
            n_cells = len(batch["batch"])
            if direct:
                on_cpu = rows is not None and self.device.type == "cpu"
                target = torch.from_numpy(rows).view(n_cells, -1) if on_cpu else None
                expr = self.module.expression(batch, codes[0], latent_library, out=target)
                if not latent_library and library_size != 1:
                    expr *= float(library_size)
                if on_cpu:
                    return rows
                return expr.cpu().numpy() if return_mean else expr[None].cpu().numpy()
            acc = torch.zeros((n_samples, n_cells, len(genes)), device=self.device)
            for s in range(n_samples):
                for code in codes:
                    expr = self.module.expression(batch, code, latent_library, sample_z=n_samples > 1)
                    acc[s] += expr[:, genes] / len(codes)
            if not latent_library:
                acc *= float(library_size)
            return (acc.mean(0) if return_mean else acc).cpu().numpy()

        def blocks():  # a generator inside, so that the checks above run at the call
            pos = 0
            for batch in self._batches(adata, indices, batch_size, sparse_counts=True):
                b = len(batch["batch"])
                rows = None if out is None else out[..., pos : pos + b, :]
                pos += b
                block = decode(batch, rows)
                if rows is not None and block is not rows:
                    rows[...] = block
                yield block

        return blocks()

    def write_normalized_expression(
        self,
        path,
        layer: str = "scvi_normalized",
        adata=None,
        indices=None,
        transform_batch=None,
        library_size: float | str = 1,
        n_samples: int = 1,
        batch_size: int | None = None,
        overwrite: bool = False,
    ) -> str:
        """Write :meth:`get_normalized_expression` (mean over ``n_samples``) to ``layers[layer]`` of the
        .h5ad ``path``, minibatch by minibatch, never holding all cells in memory (for backed or zarr
        data too). ``path`` is created (obs of the cells, the model's genes, no X) or, if it exists
        (for example from :meth:`write_latent`), must hold the same cells; it cannot be the input file.
        Returns ``path``. The layer is dense float32 (n_cells x n_genes x 4 bytes on disk)."""
        genes = self._gene_mask(None)
        mine = self._my_cells(adata, indices)  # under torchrun: each rank its share, rank 0 writes
        blocks = self._normalized_blocks(
            adata, indices if mine is None else mine, transform_batch, genes, library_size, n_samples, batch_size, True
        )
        return self._write_rows(path, "layers", layer, blocks, len(genes), adata, indices, overwrite)

    def get_batch_corrected_expression(self, adata=None, indices=None, **kwargs) -> pd.DataFrame | np.ndarray:
        """Batch-corrected denoised expression: every cell decoded in every batch, averaged. Same
        arguments as :meth:`get_normalized_expression` (except ``transform_batch``)."""
        return self.get_normalized_expression(
            adata, indices, transform_batch=list(self.registry.categories["batch"]), **kwargs
        )

    def posterior_predictive_sample(
        self,
        adata=None,
        indices=None,
        n_samples: int = 1,
        gene_list=None,
        batch_size: int | None = None,
        transform_batch=None,
    ) -> np.ndarray:
        """Counts drawn from the posterior predictive, float32 (n_cells, n_genes), or
        (n_cells, n_genes, n_samples) when ``n_samples > 1``. ``transform_batch``: a batch name to decode
        every cell as if measured in that batch (default: each cell's own)."""
        _check_positive("n_samples", n_samples)
        genes = self._gene_mask(gene_list)
        if isinstance(transform_batch, (list, tuple)):
            raise InvalidParameterError("posterior_predictive_sample takes one transform_batch (a batch name).")
        code = self._batch_codes(transform_batch)[0]
        parts = []
        for batch in self._batches(adata, indices, batch_size):
            draws = [self.module.sample_counts(batch, code)[:, genes].cpu().numpy() for _ in range(n_samples)]
            parts.append(np.stack(draws, axis=-1) if n_samples > 1 else draws[0])
        return np.concatenate(parts).astype(np.float32)

    def get_feature_correlation_matrix(
        self,
        adata=None,
        indices=None,
        n_samples: int = 10,
        batch_size: int | None = None,
        rna_size_factor: float = 1000,
        transform_batch=None,
        correlation_type: str = "spearman",
    ) -> pd.DataFrame:
        """Gene-gene correlation (n_genes x n_genes DataFrame) of denoised samples, as scvi-tools computes
        it: for each of ``n_samples`` posterior draws of z, every cell's expression at library
        ``rna_size_factor`` (counts) is drawn from the Gamma of the Gamma-Poisson (no counting noise, no
        zero inflation), and the genes are correlated over all cells x samples (``"spearman"`` or
        ``"pearson"``). ``transform_batch``: a batch name or a list (the matrices of each are averaged);
        None decodes each cell in its own batch. Memory: cells x n_samples x genes float32 per batch."""
        from scipy import stats

        if correlation_type not in ("spearman", "pearson"):
            raise InvalidParameterError(f"correlation_type must be 'spearman' or 'pearson', got {correlation_type!r}.")
        _check_positive("n_samples", n_samples)
        _check_positive("rna_size_factor", rna_size_factor)
        mats = []
        for code in self._batch_codes(transform_batch):
            draws = [  # each minibatch read once, its n_samples draws taken together (row order is immaterial)
                self.module.sample_counts(batch, code, float(rna_size_factor), denoised=True).cpu().numpy()
                for batch in self._batches(adata, indices, batch_size)
                for _ in range(n_samples)
            ]
            flat = np.concatenate(draws)  # (n_cells * n_samples, n_genes)
            if correlation_type == "spearman":
                flat = stats.rankdata(flat, axis=0)
            with np.errstate(invalid="ignore", divide="ignore"):  # a constant gene has no correlation: NaN
                mats.append(np.corrcoef(flat, rowvar=False))
        genes = np.asarray(self.registry.var_names)
        return pd.DataFrame(np.mean(mats, axis=0), index=genes, columns=genes)

    def get_likelihood_parameters(
        self, adata=None, indices=None, n_samples: int = 1, give_mean: bool = False, batch_size: int | None = None
    ) -> dict[str, np.ndarray]:
        """Parameters of p(x | z) per cell and gene: ``mean`` (expected counts), ``dispersions`` (theta)
        and, for zinb, ``dropout`` (zero-inflation probabilities, as in scvi-tools); each (n_cells, n_genes). With
        ``n_samples > 1`` they are computed at posterior samples of z, averaged if ``give_mean``, else
        stacked as (n_samples, n_cells, n_genes)."""
        _check_positive("n_samples", n_samples)
        parts: dict[str, list] = {}
        for batch in self._batches(adata, indices, batch_size):
            draws = [self.module.likelihood_parameters(batch, sample_z=n_samples > 1) for _ in range(n_samples)]
            for key in draws[0]:
                stacked = torch.stack([d[key] for d in draws]).cpu().numpy()
                parts.setdefault(key, []).append(stacked)
        out = {k: np.concatenate(v, axis=1) for k, v in parts.items()}
        if n_samples == 1 or give_mean:
            out = {k: v.mean(0) for k, v in out.items()}
        return out
