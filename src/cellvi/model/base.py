"""What every user-facing model shares: data handling and training; the shared outputs
(:mod:`cellvi.model._inference`) and save and load (:mod:`cellvi.model._save_load`) are mixed in.

A model holds an AnnData, its :class:`~cellvi.data.Registry` and a PyTorch module; it holds no tensor
maths (that lives in :mod:`cellvi.module`). Subclasses say how to build their module
(:meth:`BaseModel._build_module`) and add their own outputs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from .._settings import settings
from ..data import CellData, MinibatchLoader, Registry
from ..data.matrix import counts_checked
from ..data.ondisk import OnDiskLoader, chunk_split, is_on_disk
from ..errors import (
    InvalidParameterError,
    NotSetUpError,
    TrainingDivergedError,
)
from ..train import Trainer, TrainingPlan, distributed
from ..train.heap import freed_memory_kept
from ._compat import ScviToolsCompat, write_log
from ._inference import InferenceMixin, _check_positive
from ._save_load import SaveLoadMixin

if TYPE_CHECKING:
    from ..module import VAE

FUSED_KERNELS_MIN_CELL_EPOCHS = 1_000_000
FUSED_KERNELS_MIN_ENTRY_EPOCHS = 2_000_000_000  # cells x genes x epochs: 1M cell-epochs at 2,000 genes


class BaseModel(InferenceMixin, SaveLoadMixin, ScviToolsCompat):
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
        self.train_indices = self.validation_indices = self.test_indices = np.array([], dtype=np.int64)
        self._data_cache: tuple[int, CellData] | None = None

    def _build_module(self, registry: Registry, **init_params) -> VAE:
        raise NotImplementedError

    @staticmethod
    def _setup_split() -> dict:
        """Arguments of ``Registry.from_anndata`` by which, under torchrun, each rank checks only its
        share of an on-disk matrix (the process group is joined here, before any model is built)."""
        world = distributed.setup(settings.torch_device())
        return {"shard": (world.rank, world.size), "sum_over_shards": distributed.sum_array}

    def to_device(self, device: str | int | torch.device) -> None:
        """Move the model to ``device`` ("cpu", "cuda", "cuda:1" or a GPU index, as in scvi-tools); later
        training and outputs run there. ``model.device`` says where it is."""
        target = torch.device(f"cuda:{device}" if isinstance(device, int) else device)
        if target.type == "cuda" and not torch.cuda.is_available():
            raise InvalidParameterError(f"Cannot move the model to {target}: this machine has no CUDA GPU.")
        self.module.to(target)
        self.device = target

    def __repr__(self) -> str:
        s = self.registry.summary

        def count(n: int, one: str, many: str) -> str:
            return f"{n} {one if n == 1 else many}"

        params = ", ".join(f"{k}={v!r}" for k, v in self.init_params.items())
        return (
            f"{type(self).__name__}({params})\n  data: {count(s['n_cells'], 'cell', 'cells')} x "
            f"{count(s['n_vars'], 'gene', 'genes')}, {count(s['n_batch'], 'batch', 'batches')}, "
            f"{count(s['n_labels'], 'label', 'labels')}; trained: {self.is_trained}"
        )

    @property
    def summary_string(self) -> str:
        """What ``print(model)`` shows: the model's arguments, its data and whether it is trained (as
        scvi-tools' ``model.summary_string``)."""
        return repr(self)

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
        size = (settings.batch_size or 1024) if batch_size is None else batch_size
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
        csr_transfer: bool = False,
        read_ahead: int = 0,
    ):
        """A :class:`MinibatchLoader`, or an :class:`OnDiskLoader` (chunked reads) when ``data.X`` is on
        disk (a backed AnnData or zarr) and the cells are asked for in increasing order. ``shard``:
        (index, count) of a data-parallel rank's share of each minibatch; ``csr_transfer``, ``read_ahead``:
        see :class:`MinibatchLoader` (the on-disk loader reads ahead by itself)."""
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
                csr_transfer=csr_transfer,
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
            csr_transfer=csr_transfer,
            read_ahead=read_ahead,
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
        sparse_first_layer: bool | None = None,
        schedule: str = "scvi-tools",
        **kwargs,
    ) -> BaseModel:
        """Train the model with Adam on minibatches.

        Parameters
        ----------
        max_epochs
            Passes over the training cells. Default: ``min(400, round(400 * 20000 / n_cells))`` (an
            eighth of it with ``schedule="fast"``).
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
            ``n_epochs_kl_warmup`` (400), ``n_steps_kl_warmup``, ``max_kl_weight``, ``min_kl_weight``;
            ``lr_schedule`` ("constant", scvi-tools' schedule; or "warmup_cosine" with ``lr_warmup_steps``
            (100) and ``lr_min_fraction`` (0.01), see docs/training.md).
        enable_progress_bar
            Show a progress bar (default: ``cellvi.settings.progress_bar``).
        checkpoint_dir, checkpoint_every, resume
            Write a checkpoint every ``checkpoint_every`` epochs to ``checkpoint_dir``; with ``resume=True``
            continue from the checkpoint found there. Workers that torchrun restarts (``--max-restarts``)
            resume from it without being asked.
        fused_kernels
            Compile the training step with ``torch.compile`` (~24 s the first time on a machine, ~3-4 s
            in later processes, which find it in TorchInductor's on-disk caches; then ~1.4x faster steps
            on a 2-core CPU). Default: on for long runs (training cells x
            epochs >= 1,000,000, as at the default ``max_epochs`` for any dataset above ~2,500 cells, or
            cells x epochs x genes >= 2e9, the same work on wider data), off otherwise. Where compilation fails it warns and trains eagerly.
        callbacks
            Functions ``f(epoch, row)`` called after each epoch with that epoch's history row (a dict);
            one that returns True stops training.
        check_val_every_n_epoch
            Evaluate the validation cells every this many epochs and after the last. Default: every
            epoch with early stopping, else only after the last epoch (validation is not training: like
            scvi-tools, cellvi does not spend time on it unless asked).
        loss_kwargs
            Extra keyword arguments of the module's loss (SCANVI passes its classification weight).
        sparse_first_layer
            The encoders' first layer reads each minibatch's non-zero counts, in the forward pass and for
            its weight's gradient; no dense minibatch is built for them (the result differs from the
            dense layer's by float round-off only). Default: on for wide, sparse data (at least 5,000
            genes, at most 10% non-zeros; docs/performance.md, "The training data path").
        schedule
            "scvi-tools" (default: scvi-tools' epochs, constant learning rate and KL warm-up over 400
            epochs) or "fast" (an eighth of those epochs, the KL warm-up over half of them, a cosine
            learning-rate schedule; scvi-tools' held-out ELBO far sooner, but it mixes the batches less,
            measured on 1,200 and 20,000 cells); ``max_epochs`` and ``plan_kwargs`` given here override it (docs/training.md).
        **kwargs
            scvi-tools' extra keywords: ``early_stopping_monitor`` ("elbo_validation"),
            ``early_stopping_min_delta`` and ``early_stopping_mode`` ("min") are honoured; so is ``precision``:
            "32-true" (default) or "bf16-mixed", which runs the training steps' matrix products in bfloat16
            (weights, gradients, likelihood, validation and outputs stay float32; 1.1-1.7x faster steps on
            wide data on a CPU with bfloat16 instructions, docs/performance.md); ``accelerator`` and
            ``devices`` are checked against what the model uses; Lightning-only ones
            (``logger``, ``load_sparse_tensor``...) are ignored with a warning. Any other keyword is an
            error, raised before training starts.

        Returns the model; the per-epoch history is in ``model.history`` (a DataFrame; the ``elbo_*``
        columns hold the negative ELBO, as scvi-tools names it) and, in scvi-tools' shape (a dict of
        one-column DataFrames), in ``model.history_``.
        """
        from ._data_path import training_data_path
        from ._minify import refuse_if_minified
        from ._schedules import resolve_schedule
        from ._train_kwargs import resolve

        refuse_if_minified(self, "train()")
        trainer_extra = resolve(kwargs, self.device)
        n = self.adata.n_obs
        max_epochs, plan_kwargs = resolve_schedule(schedule, n, max_epochs, plan_kwargs)
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
        # cells in neither (train_size + validation_size < 1), as scvi-tools' test set
        self.test_indices = np.setdiff1d(np.arange(n), np.concatenate([self.train_indices, self.validation_indices]))
        path = training_data_path(self.device, data.X, sparse_first_layer)
        train_loader = self._loader(
            data, self.train_indices, batch_size, True, seed, shard=(world.rank, world.size), **path
        )
        if fused_kernels is None:
            cell_epochs = len(self.train_indices) * max_epochs
            long_run = cell_epochs >= FUSED_KERNELS_MIN_CELL_EPOCHS
            long_run = long_run or cell_epochs * int(data.X.shape[1]) >= FUSED_KERNELS_MIN_ENTRY_EPOCHS
            fused_kernels = self._compile_by_default and long_run
        val_mine = distributed.my_cells(self.validation_indices)  # each rank validates a contiguous share
        val_indices = self.validation_indices if val_mine is None else val_mine
        val_loader = self._loader(data, val_indices, max(batch_size, 1024), False, seed, **path)
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
