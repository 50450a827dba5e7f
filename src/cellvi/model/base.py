"""What every user-facing model shares: data handling, training, streaming outputs, save and load.

A model holds an AnnData, its :class:`~cellvi.data.Registry` and a PyTorch module; it holds no tensor
maths (that lives in :mod:`cellvi.module`). Subclasses say how to build their module
(:meth:`BaseModel._build_module`) and add their own outputs.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from .. import __version__
from .._settings import settings
from ..data import CellData, MinibatchLoader, Registry
from ..data.matrix import counts_checked
from ..data.ondisk import OnDiskLoader, chunk_split, is_on_disk
from ..data.writers import write_rows
from ..errors import (
    InvalidParameterError,
    ModelFileError,
    NotSetUpError,
    TrainingDivergedError,
)
from ..train import Trainer, TrainingPlan, distributed
from ..train.heap import freed_memory_kept
from . import _archive, _files
from ._compat import ScviToolsCompat, write_log

if TYPE_CHECKING:
    from ..module import VAE

FUSED_KERNELS_MIN_CELL_EPOCHS = 1_000_000


class BaseModel(ScviToolsCompat):
    """Base class of SCVI and SCANVI. Not used directly."""

    _model_name = "Base"
    _latent_key = "X_latent"
    _plan_defaults: dict = {}  # per-model defaults of plan_kwargs (a mapped query sets weight_decay=0)
    _compile_by_default = True  # fused_kernels=None compiles long runs (see train)
    module: VAE  # the generative model (SCANVAE for SCANVI, LDVAE for LinearSCVI)

    def __init__(self, adata, **init_params) -> None:
        if adata is None:
            raise NotSetUpError("Pass the AnnData the model is for: Model(adata).")
        registry = Registry.of(adata)
        self._init(adata, registry, init_params)

    def _init(self, adata, registry: Registry, init_params: dict) -> None:
        self.adata = adata
        self.registry = registry
        self.init_params = dict(init_params)
        self.module = self._build_module(registry, **init_params)
        distributed.setup(settings.torch_device())  # under torchrun: join the process group (GPU LOCAL_RANK)
        self.device = settings.torch_device()
        self.module.to(self.device)
        self.is_trained = False
        self.history = pd.DataFrame()
        self.train_indices = self.validation_indices = np.array([], dtype=np.int64)
        self._data_cache: tuple[int, CellData] | None = None

    def _build_module(self, registry: Registry, **init_params) -> VAE:
        raise NotImplementedError

    @staticmethod
    def _setup_split() -> dict:
        """Arguments of ``Registry.from_anndata`` by which, under torchrun, each rank checks only its
        share of an on-disk matrix (the process group is joined here, before any model is built)."""
        world = distributed.setup(settings.torch_device())
        return {"shard": (world.rank, world.size), "sum_over_shards": distributed.sum_array}

    def __repr__(self) -> str:
        s = self.registry.summary
        params = ", ".join(f"{k}={v!r}" for k, v in self.init_params.items())
        return (
            f"{type(self).__name__}({params})\n  data: {s['n_cells']} cells x {s['n_vars']} genes, "
            f"{s['n_batch']} batches, {s['n_labels']} labels; trained: {self.is_trained}"
        )

    # ------------------------------------------------------------------ data
    def _cell_data(self, adata=None) -> CellData:
        """The arrays of ``adata`` (default: the model's), checked against the registry."""
        if adata is None or adata is self.adata:
            if self._data_cache is None or self._data_cache[0] != id(self.adata):
                self._data_cache = (id(self.adata), self.registry.cell_data(self.adata))
            return self._data_cache[1]
        return self.registry.cell_data(adata)

    def _batches(
        self,
        adata=None,
        indices=None,
        batch_size: int | None = None,
        likelihood_terms: bool = False,
        sparse_counts: bool = False,
    ) -> Iterator[dict]:
        """Minibatches of the cells ``indices`` of ``adata``, in order, on the model's device; with the
        likelihoods' terms, or sparse counts, only if asked (see :class:`~cellvi.data.MinibatchLoader`)."""
        data = self._cell_data(adata)
        if indices is not None:
            indices = np.arange(data.n_cells)[np.asarray(indices)]
        size = 1024 if batch_size is None else batch_size
        _check_positive("batch_size", size)
        self.module.eval()
        return iter(self._loader(data, indices, size, False, 0, likelihood_terms, sparse_counts))

    def _loader(
        self,
        data: CellData,
        indices,
        batch_size: int,
        shuffle: bool,
        seed: int,
        likelihood_terms: bool = True,
        sparse_counts: bool = False,
        shard: tuple[int, int] = (0, 1),
    ):
        """A :class:`MinibatchLoader`, or an :class:`OnDiskLoader` (chunked reads) when ``data.X`` is on
        disk (a backed AnnData or zarr) and the cells are asked for in increasing order. ``shard``:
        (index, count) of a data-parallel rank's share of each minibatch."""
        if is_on_disk(data.X) and (indices is None or bool(np.all(np.diff(indices) > 0))):
            layer = self.registry.setup_args["layer"]
            return OnDiskLoader(
                data,
                indices,
                batch_size,
                shuffle,
                seed,
                self.device,
                layer=layer,
                validate=not counts_checked(data.X),
                likelihood_terms=likelihood_terms,
                sparse_counts=sparse_counts,
                shard_index=shard[0],
                n_shards=shard[1],
            )
        return MinibatchLoader(
            data,
            indices,
            batch_size,
            shuffle,
            seed,
            self.device,
            likelihood_terms,
            sparse_counts,
            shard_index=shard[0],
            n_shards=shard[1],
        )

    def _my_cells(self, adata=None, indices=None) -> np.ndarray | None:
        """Under torchrun: this rank's contiguous share of the cells ``indices`` of ``adata`` (positions),
        which inference computes before the ranks' results are put together in order; else None."""
        n = (self.adata if adata is None else adata).n_obs
        positions = np.arange(n) if indices is None else np.arange(n)[np.asarray(indices)]
        return distributed.my_cells(positions)

    def _n_cells(self, adata=None, indices=None) -> int:
        n = (self.adata if adata is None else adata).n_obs
        return n if indices is None else len(np.arange(n)[np.asarray(indices)])

    # ------------------------------------------------------------------ training
    def train(
        self,
        max_epochs: int | None = None,
        train_size: float = 0.9,
        validation_size: float | None = None,
        batch_size: int = 128,
        early_stopping: bool = False,
        early_stopping_patience: int = 45,
        plan_kwargs: dict | None = None,
        enable_progress_bar: bool | None = None,
        checkpoint_dir: str | None = None,
        checkpoint_every: int | None = None,
        resume: bool = False,
        fused_kernels: bool | None = None,
        callbacks: list | None = None,
        check_val_every_n_epoch: int | None = None,
        loss_kwargs: dict | None = None,
        **kwargs,
    ) -> BaseModel:
        """Train the model with Adam on minibatches.

        Parameters
        ----------
        max_epochs
            Passes over the training cells. Default: ``min(400, round(400 * 20000 / n_cells))``.
        train_size, validation_size
            Fractions of cells used to train and to validate (default: the rest). ``train_size=1``
            trains on every cell and skips validation.
        batch_size
            Cells per minibatch. A trailing minibatch of one cell is merged into the previous one. Under
            torchrun this is the global minibatch: each of N processes trains on ``batch_size / N`` of
            its cells, the same steps as one process would take, with the same learning rate
            (docs/distributed.md).
        early_stopping, early_stopping_patience
            Stop when the validation ELBO has not improved for this many epochs.
        plan_kwargs
            Optimiser and KL warm-up: ``lr`` (1e-3), ``weight_decay`` (1e-6), ``eps`` (0.01),
            ``n_epochs_kl_warmup`` (400), ``n_steps_kl_warmup``, ``max_kl_weight``, ``min_kl_weight``.
        enable_progress_bar
            Show a progress bar (default: ``cellvi.settings.progress_bar``).
        checkpoint_dir, checkpoint_every, resume
            Write a checkpoint every ``checkpoint_every`` epochs to ``checkpoint_dir``; with ``resume=True``
            continue from the checkpoint found there. Workers that torchrun restarts (``--max-restarts``)
            resume from it without being asked.
        fused_kernels
            Compile the training step with ``torch.compile`` (~15 s once per process, ~6 s with a warm
            cache; then ~1.4x faster steps on a 2-core CPU). Default: on for long runs (training cells x
            epochs >= 1,000,000, as at the default ``max_epochs`` for any dataset above ~2,500 cells),
            off otherwise. Where compilation fails it warns and trains eagerly.
        callbacks
            Functions ``f(epoch, row)`` called after each epoch with that epoch's history row (a dict);
            one that returns True stops training.
        check_val_every_n_epoch
            Evaluate the validation cells every this many epochs and after the last. Default: every
            epoch with early stopping, else only after the last epoch (validation is not training: like
            scvi-tools, cellvi does not spend time on it unless asked).
        loss_kwargs
            Extra keyword arguments of the module's loss (SCANVI passes its classification weight).
        **kwargs
            scvi-tools' extra keywords: ``early_stopping_monitor`` ("elbo_validation"),
            ``early_stopping_min_delta`` and ``early_stopping_mode`` ("min") are honoured; ``accelerator``,
            ``devices`` and ``precision`` are checked against what the model uses; Lightning-only ones
            (``logger``, ``load_sparse_tensor``...) are ignored with a warning. Any other keyword is an
            error, raised before training starts.

        Returns the model; the per-epoch history is in ``model.history`` (a DataFrame; the ``elbo_*``
        columns hold the negative ELBO, as scvi-tools names it) and, in scvi-tools' shape (a dict of
        one-column DataFrames), in ``model.history_``.
        """
        from ._minify import refuse_if_minified
        from ._train_kwargs import resolve

        refuse_if_minified(self, "train()")
        trainer_extra = resolve(kwargs, self.device)
        n = self.adata.n_obs
        if max_epochs is None:
            max_epochs = int(min(400, max(1, round(400 * 20000 / n))))
        _check_positive("max_epochs", max_epochs)
        _check_positive("batch_size", batch_size)
        if not 0 < train_size <= 1:
            raise InvalidParameterError(f"train_size must be in (0, 1], got {train_size}.")
        if validation_size is not None and not 0 <= validation_size <= 1 - train_size + 1e-9:
            raise InvalidParameterError("validation_size must be in [0, 1 - train_size].")
        if early_stopping:
            _check_positive("early_stopping_patience", early_stopping_patience)
        if checkpoint_every is not None:
            _check_positive("checkpoint_every", checkpoint_every)
        if check_val_every_n_epoch is not None:
            _check_positive("check_val_every_n_epoch", check_val_every_n_epoch)
        if (checkpoint_every is not None or resume) and checkpoint_dir is None:
            raise InvalidParameterError("checkpoint_every and resume need checkpoint_dir (a folder path).")
        plan = TrainingPlan.from_kwargs({**self._plan_defaults, **(plan_kwargs or {})})
        seed = settings.seed if settings.seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())
        seed = distributed.broadcast_int(seed)  # one split and shuffle for all ranks
        world = distributed.world()
        resume = resume or (checkpoint_dir is not None and distributed.restart_count() > 0)
        n_train = int(math.ceil(train_size * n))
        n_val = n - n_train if validation_size is None else int(math.floor(validation_size * n))
        data = self._cell_data()
        if is_on_disk(data.X):  # whole blocks of rows, so that each side reads long runs (see chunk_split)
            self.train_indices, self.validation_indices = chunk_split(n, n_train, n_val, seed)
        else:
            perm = np.random.default_rng([seed, 1]).permutation(n)
            self.train_indices = np.sort(perm[:n_train])
            self.validation_indices = np.sort(perm[n_train : n_train + n_val])
        train_loader = self._loader(data, self.train_indices, batch_size, True, seed, shard=(world.rank, world.size))
        if fused_kernels is None:
            long_run = len(self.train_indices) * max_epochs >= FUSED_KERNELS_MIN_CELL_EPOCHS
            fused_kernels = self._compile_by_default and long_run
        val_mine = distributed.my_cells(self.validation_indices)  # each rank validates a contiguous share
        val_indices = self.validation_indices if val_mine is None else val_mine
        val_loader = self._loader(data, val_indices, max(batch_size, 1024), False, seed)
        trainer = Trainer(
            self.module,
            train_loader,
            val_loader if n_val > 0 else None,
            plan,
            max_epochs,
            early_stopping=early_stopping,
            early_stopping_patience=early_stopping_patience,
            progress_bar=settings.progress_bar if enable_progress_bar is None else enable_progress_bar,
            checkpoint_dir=checkpoint_dir,
            checkpoint_every=checkpoint_every,
            resume=resume,
            extra_loss_kwargs=loss_kwargs,
            callbacks=callbacks,
            **trainer_extra,
            compile_loss=fused_kernels,
            check_val_every_n_epoch=check_val_every_n_epoch,
        )
        try:
            with freed_memory_kept(settings.keep_freed_memory):  # steps reuse the memory the last one freed
                self.history = trainer.fit()
        except TrainingDivergedError:
            self.history = trainer.history()  # the good epochs, to look at
            raise
        finally:
            self.module.eval()
        self.is_trained = True
        if settings.logging_dir is not None:
            write_log(self, settings.logging_dir)
        return self

    # ------------------------------------------------------------------ shared outputs
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

    def _mean_over_cells(self, per_batch, adata, indices, batch_size) -> float:
        from ._minify import refuse_if_minified

        if adata is None:
            refuse_if_minified(self, "The ELBO, reconstruction error and marginal likelihood")
        mine = self._my_cells(adata, indices)  # under torchrun: each rank its share, summed over ranks
        total, n = 0.0, 0
        for batch in self._batches(adata, indices if mine is None else mine, batch_size, likelihood_terms=True):
            values = per_batch(batch)
            total += float(values.double().sum())
            n += len(values)
        total, n = distributed.sum_over_ranks(torch.tensor([total, n], dtype=torch.float64)).tolist()
        return total / max(n, 1)

    def get_elbo(self, adata=None, indices=None, batch_size: int | None = None) -> float:
        """Mean evidence lower bound per cell (nats; higher is better), at one posterior sample."""

        def elbo(batch):
            t = self.module.elbo_terms(batch)
            return -(t["reconstruction_loss"] + t["kl_z"] + t["kl_l"])

        return self._mean_over_cells(elbo, adata, indices, batch_size)

    def get_reconstruction_error(self, adata=None, indices=None, batch_size: int | None = None) -> dict:
        """Mean reconstruction loss per cell, ``-log p(x | z, l)`` in nats (lower is better)."""
        value = self._mean_over_cells(
            lambda b: self.module.elbo_terms(b)["reconstruction_loss"], adata, indices, batch_size
        )
        return {"reconstruction_loss": value}

    def get_marginal_ll(
        self, adata=None, indices=None, n_mc_samples: int = 1000, batch_size: int | None = None
    ) -> float:
        """Mean per cell of log p(x) (nats; higher is better), by importance sampling with
        ``n_mc_samples`` draws from the approximate posterior."""
        _check_positive("n_mc_samples", n_mc_samples)
        return self._mean_over_cells(
            lambda b: self.module.marginal_ll(b, n_mc_samples), adata, indices, batch_size or 256
        )

    # ------------------------------------------------------------------ save and load
    def save(
        self,
        dir_path: str | os.PathLike,
        overwrite: bool = False,
        save_anndata: bool = False,
        format: str = "cellvi",
        archive: bool = False,
    ) -> None:
        """Save weights (``model.safetensors``), hyper-parameters and registry (``model.json``) and,
        with ``save_anndata``, the AnnData (``adata.h5ad``). The folder is written next to its final
        place and renamed at the end, so an interrupted save never leaves a half-written model. Under
        torchrun, rank 0 writes while the other ranks wait (call it on every rank).

        ``archive=True`` writes those files instead into one zip file ``dir_path`` (e.g. ``model.zip``)
        with a manifest of their SHA-256 (docs/archives.md); :meth:`load` and ``load_query_data``
        accept it. ``format="scvi-tools"`` writes what scvi-tools 1.x writes (``model.pt``, a pickle),
        for ``scvi.model.SCVI.load`` / ``SCANVI.load``; see docs/switching.md for what it cannot hold."""
        if format == "scvi-tools":
            if archive:
                raise InvalidParameterError("archive=True writes cellvi's format only; drop format= or archive=.")
            from ._scvi_tools_export import save_model

            return distributed.on_main(lambda: save_model(self, dir_path, overwrite, save_anndata))
        if format != "cellvi":
            raise InvalidParameterError(f"format must be 'cellvi' or 'scvi-tools', got {format!r}.")
        if archive:
            return distributed.on_main(lambda: self._save_archive(Path(dir_path), overwrite, save_anndata))
        meta = {
            "format": _files.FORMAT,
            "cellvi_version": __version__,
            "model_class": type(self).__name__,
            "init_params": self.init_params,
            "registry": json.loads(self.registry.to_json()),
            "is_trained": self.is_trained,
            "history": json.loads(self.history.reset_index().to_json(orient="records")) if len(self.history) else [],
            "extras": self._saved_extras(),
        }
        distributed.on_main(lambda: self._save(dir_path, overwrite, save_anndata, meta))

    def _save(self, dir_path, overwrite: bool, save_anndata: bool, meta: dict) -> None:
        with _files.staged_folder(dir_path, overwrite) as tmp:
            _files.write_weights(tmp, self.module.state_dict())
            names = [_files.WEIGHTS_NAME]
            if save_anndata:
                self.adata.write_h5ad(tmp / _files.ADATA_NAME)
                names.append(_files.ADATA_NAME)
            meta["sha256"] = {name: _files.sha256(tmp / name) for name in names}
            (tmp / _files.META_NAME).write_text(json.dumps(meta, indent=1))

    def _save_archive(self, final: Path, overwrite: bool, save_anndata: bool) -> None:
        """Write the model as one checksummed zip (see ``save(archive=True)``)."""
        if final.exists() and not overwrite:
            raise ModelFileError(f"{final} already exists. Pass overwrite=True to replace it.")
        with distributed.local(), tempfile.TemporaryDirectory(prefix=f".{final.name}.saving-") as tmp:
            self.save(Path(tmp) / "model", save_anndata=save_anndata)
            _archive.write_archive(final, Path(tmp) / "model", overwrite)

    @classmethod
    def load(cls, dir_path: str | os.PathLike, adata=None, device: str | None = None) -> BaseModel:
        """Load a model saved with :meth:`save`. ``adata`` must have the saved genes (in order) and
        known categories; when None, the AnnData saved in the folder is used. ``dir_path`` may also be an
        archive written by ``save(..., archive=True)`` (checked against its manifest first). Loading only
        reads JSON and safetensors: no code from the folder is ever executed.

        A folder saved by scvi-tools 1.x (``model.pt``) is read too, without executing anything from it
        (see :mod:`cellvi.model._scvi_tools_format` and docs/switching.md)."""
        from . import _scvi_tools_format

        if _archive.is_archive(dir_path):
            with _archive.opened(dir_path) as folder:
                return cls.load(folder, adata=adata, device=device)
        if _scvi_tools_format.is_scvi_tools_folder(dir_path):
            return _scvi_tools_format.load_model(cls, dir_path, adata, device)
        meta = _files.read_meta(dir_path)
        if meta["model_class"] != cls.__name__:
            raise ModelFileError(
                f"{dir_path} holds a {meta['model_class']} model; load it with cellvi.model.{meta['model_class']}."
            )
        registry = _files.registry_of(meta, dir_path)
        if adata is None:
            adata = _files.read_saved_adata(dir_path, meta)
        registry.check_genes(adata)
        registry.cell_data(adata, validate_counts=False)  # unknown categories fail here, clearly
        model = cls.__new__(cls)
        old_device = settings.device
        try:
            settings.device = device if device is not None else old_device
            model._init(adata, registry, meta["init_params"])
        except (TypeError, ValueError, KeyError) as exc:
            raise ModelFileError(
                f"{dir_path}: the saved init_params do not fit {cls.__name__} ({exc!s:.200})."
            ) from exc
        finally:
            settings.device = old_device
        _files.load_weights_into(model.module, dir_path, meta)
        adata.uns["_cellvi_registry"] = registry.to_json()  # only once everything has loaded
        model.module.to(model.device)
        model.module.eval()
        model.is_trained = bool(meta.get("is_trained", True))
        if meta.get("history"):
            model.history = pd.DataFrame(meta["history"]).set_index("epoch")
        model._restore_extras(meta.get("extras") or {})
        return model

    def _saved_extras(self) -> dict:
        """JSON-serialisable state beyond the weights that a subclass saves with the model (e.g. SCANVI's
        calibration); given back to :meth:`_restore_extras` by :meth:`load` and ``load_query_data``."""
        return {}

    def _restore_extras(self, extras: dict) -> None:
        pass


def _check_positive(name: str, value) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise InvalidParameterError(f"{name} must be a positive integer, got {value!r}.")
