"""SOLO (Bernstein et al. 2020): doublet detection on a trained scVI model, with scvi-tools' calls.

Doublets are simulated by adding the counts of random pairs of cells. The scVI model encodes the real
cells and the simulated doublets; a classifier then learns to tell them apart from the latent mean
and the log library size. A real cell that the classifier places among the simulated doublets is
probably a doublet.

>>> solo = cellvi.external.SOLO.from_scvi_model(model, restrict_to_batch="lane1")
>>> solo.train()
>>> solo.predict()  # DataFrame of P(doublet), P(singlet) per real cell
>>> solo.predict(soft=False)  # "doublet" / "singlet"

Differences from scvi-tools (see docs/switching.md): the classifier keeps the weights of its best
validation epoch; the simulation and the split are seeded (``seed``, default ``cellvi.settings.seed``
or 0); ``predict`` does not warn about scvi-tools' old logits behaviour; ``save`` always writes the (small)
features with the classifier.
"""

from __future__ import annotations

import warnings

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from .._settings import settings
from ..data.matrix import count_matrix
from ..errors import InvalidParameterError, MissingKeyError, ModelFileError, NotSetUpError
from ..module.classifier import Classifier
from ..train.classifier import fit_classifier
from . import _files

SETUP_KEY = "_cellvi_solo"
SIM_KEY = "_solo_doub_sim"


class SOLO:
    """Doublet classifier on features of cells (usually made by :meth:`from_scvi_model`).

    adata: AnnData whose ``X`` holds the features (cells x d floats) and whose labels column (given to
    :meth:`setup_anndata`) says "singlet" or "doublet". seed: the initial weights, the split and the
    shuffles (default ``cellvi.settings.seed``, else 0). classifier_kwargs: ``n_hidden`` (128),
    ``n_layers`` (1), ``dropout_rate`` (0.1), ``use_batch_norm``, ``use_layer_norm`` of
    :class:`cellvi.module.classifier.Classifier`.
    """

    def __init__(self, adata, seed: int | None = None, **classifier_kwargs) -> None:
        if SETUP_KEY not in adata.uns:
            raise NotSetUpError("Call SOLO.setup_anndata(adata, labels_key=...) first, or use SOLO.from_scvi_model.")
        labels = adata.obs[adata.uns[SETUP_KEY]["labels_key"]].astype(str).to_numpy()
        unknown = sorted(set(labels) - {"singlet", "doublet"})
        if unknown:
            raise InvalidParameterError(f"SOLO's labels must be 'singlet' or 'doublet'; found {unknown[:5]}.")
        self.adata = adata
        self.classes = ["doublet", "singlet"]  # scvi-tools' column order (sorted categories)
        X = np.asarray(adata.X, dtype=np.float32)
        if not np.all(np.isfinite(X)):
            raise InvalidParameterError("SOLO's features contain NaN or infinite values.")
        # standardised per feature (over all rows; no labels used): the log library (~6-10) and the
        # latent (~0 +- 1) then enter on one scale
        sd = X.std(0)
        self._X = torch.as_tensor((X - X.mean(0)) / np.where(sd > 0, sd, 1.0)).float()
        self._y = torch.as_tensor((labels == "singlet").astype(np.int64))
        self._seed = (settings.seed if settings.seed is not None else 0) if seed is None else int(seed)
        with torch.random.fork_rng(devices=[]):  # the initial weights follow the seed, not the global stream
            torch.manual_seed(self._seed)
            self.module = Classifier(X.shape[1], len(self.classes), batch_norm_momentum=0.1, **classifier_kwargs)
        self.init_params = {"seed": self._seed, **classifier_kwargs}
        self.history = pd.DataFrame()
        self.is_trained = False
        self.train_indices = self.validation_indices = np.array([], dtype=np.int64)

    @staticmethod
    def setup_anndata(adata, labels_key: str | None = None, layer: str | None = None) -> None:
        """Record which ``adata.obs`` column holds "singlet"/"doublet" (features in ``X``; ``layer`` is
        not supported: SOLO reads ``X``)."""
        if layer is not None:
            raise InvalidParameterError("SOLO reads its features from adata.X; layer= is not supported.")
        if labels_key is None or labels_key not in adata.obs.columns:
            raise MissingKeyError(f"labels_key must be a column of adata.obs, got {labels_key!r}.")
        adata.uns[SETUP_KEY] = {"labels_key": labels_key}

    @classmethod
    def from_scvi_model(
        cls,
        scvi_model,
        adata=None,
        restrict_to_batch: str | None = None,
        doublet_ratio: int = 2,
        seed: int | None = None,
        **classifier_kwargs,
    ) -> SOLO:
        """SOLO on the cells of ``adata`` (default: the model's) encoded by ``scvi_model``, plus
        ``doublet_ratio`` x as many simulated doublets (sums of two random cells' counts).

        restrict_to_batch: only the cells of this batch, and only pairs within it (SOLO is meant for
        one lane at a time). Without it, on a model with several batches, pairs come from all cells and
        are encoded as the first batch (as scvi-tools; a warning says so).
        """
        adata = scvi_model.adata if adata is None else adata
        if not isinstance(doublet_ratio, int) or doublet_ratio < 1:
            raise InvalidParameterError(f"doublet_ratio must be a positive integer, got {doublet_ratio!r}.")
        reg = scvi_model.registry
        batch_key, batches = reg.setup_args["batch_key"], reg.categories["batch"]
        indices = None
        if restrict_to_batch is not None:
            if batch_key is None or len(batches) < 2:
                raise InvalidParameterError("restrict_to_batch needs a model trained with several batches.")
            mask = adata.obs[batch_key].astype(str).to_numpy() == str(restrict_to_batch)
            if not mask.any():
                raise MissingKeyError(f"Batch {restrict_to_batch!r} has no cells; batches: {batches}.")
            indices = np.flatnonzero(mask)
        elif len(batches) > 1:
            warnings.warn(
                "restrict_to_batch not given for a model trained with several batches: doublets are "
                f"simulated from all cells and encoded as batch {batches[0]!r}. Run SOLO per batch instead.",
                UserWarning,
                stacklevel=2,
            )
        seed = (settings.seed if settings.seed is not None else 0) if seed is None else seed
        doublets = cls.create_doublets(scvi_model, adata, indices, doublet_ratio, seed)
        if batch_key is not None:
            doublets.obs[batch_key] = str(restrict_to_batch) if restrict_to_batch is not None else batches[0]
        parts = []
        for data, idx, label in ((adata, indices, "singlet"), (doublets, None, "doublet")):
            z = scvi_model.get_latent_representation(data, indices=idx, obsm_key=None)
            lib = scvi_model.get_latent_library_size(data, indices=idx)
            names = data.obs_names if idx is None else data.obs_names[idx]
            part = anndata.AnnData(np.concatenate([z, np.log(lib)], axis=1).astype(np.float32))
            part.obs_names = names
            part.obs[SIM_KEY] = label
            parts.append(part)
        features = anndata.concat(parts)
        cls.setup_anndata(features, labels_key=SIM_KEY)
        return cls(features, seed=seed, **classifier_kwargs)

    @staticmethod
    def create_doublets(scvi_model, adata, indices, doublet_ratio: int, seed: int = 0):
        """An AnnData of ``doublet_ratio x len(cells)`` simulated doublets: the summed counts of two cells
        drawn at random (with replacement, ``seed``) from ``indices`` of ``adata`` (default all). Their
        ``obs`` (covariates) are those of the first cell of each pair, the size factor (if any) the sum."""
        args = scvi_model.registry.setup_args
        X = count_matrix(adata, args["layer"])
        cells = np.arange(adata.n_obs) if indices is None else np.asarray(indices)
        pairs = np.random.default_rng(seed).choice(cells, size=(doublet_ratio * len(cells), 2))
        if sp.issparse(X):
            X = sp.csr_matrix(X)
            counts = X[pairs[:, 0]] + X[pairs[:, 1]]
        else:
            counts = np.asarray(X)[pairs[:, 0]] + np.asarray(X)[pairs[:, 1]]
        obs = adata.obs.iloc[pairs[:, 0]].copy()
        obs.index = [f"sim_doublet_{i}" for i in range(len(pairs))]
        if args["size_factor_key"] is not None:
            sf = adata.obs[args["size_factor_key"]].to_numpy()
            obs[args["size_factor_key"]] = sf[pairs[:, 0]] + sf[pairs[:, 1]]
        if args["labels_key"] is not None:
            obs[args["labels_key"]] = scvi_model.registry.categories["labels"][0]
        out = anndata.AnnData(counts, obs=obs, var=pd.DataFrame(index=adata.var_names))
        if args["layer"] is not None:
            out.layers[args["layer"]] = out.X
        return out

    def train(
        self,
        max_epochs: int = 400,
        lr: float = 1e-3,
        train_size: float = 0.9,
        validation_size: float | None = None,
        batch_size: int = 128,
        plan_kwargs: dict | None = None,
        early_stopping: bool = True,
        early_stopping_patience: int = 30,
        early_stopping_min_delta: float = 0.0,
        early_stopping_warmup_epochs: int = 0,
        shuffle_set_split: bool = True,
        enable_progress_bar: bool | None = None,
        **trainer_kwargs,
    ) -> None:
        """Train the classifier (Adam, cross-entropy) on ``train_size`` of the rows, stopping after
        ``early_stopping_patience`` epochs without a better validation loss; the best epoch's weights are
        kept. ``early_stopping_min_delta``: the improvement that counts; ``early_stopping_warmup_epochs``:
        no stop before that epoch; ``shuffle_set_split=False``: the first rows train, the next validate.
        plan_kwargs: ``weight_decay`` (1e-6). ``accelerator``/``devices`` are accepted (CPU only)."""
        unknown = sorted(set(trainer_kwargs) - {"accelerator", "devices"})
        if unknown:
            raise InvalidParameterError(f"SOLO.train() got unknown keywords {unknown}.")
        plan = {"weight_decay": 1e-6, **(plan_kwargs or {})}
        if set(plan) - {"weight_decay", "lr"}:
            raise InvalidParameterError(f"plan_kwargs takes lr and weight_decay, got {sorted(plan)}.")
        if not 0 < train_size <= 1 or max_epochs < 1 or batch_size < 2:
            raise InvalidParameterError("need 0 < train_size <= 1, max_epochs >= 1 and batch_size >= 2.")
        n = len(self._y)
        n_train = int(np.ceil(train_size * n))
        n_val = n - n_train if validation_size is None else int(np.floor(validation_size * n))
        if n_train + n_val > n:
            raise InvalidParameterError("validation_size must be at most 1 - train_size.")
        seed = self._seed
        perm = np.random.default_rng([seed, 1]).permutation(n) if shuffle_set_split else np.arange(n)
        self.train_indices, self.validation_indices = np.sort(perm[:n_train]), np.sort(perm[n_train : n_train + n_val])
        progress = settings.progress_bar if enable_progress_bar is None else enable_progress_bar
        with torch.random.fork_rng(devices=[]):  # dropout follows the seed; the global stream is left alone
            torch.manual_seed(seed)
            self.history = fit_classifier(
                self.module,
                self._X,
                self._y,
                self.train_indices,
                self.validation_indices,
                max_epochs,
                plan.get("lr", lr),
                plan["weight_decay"],
                batch_size,
                early_stopping_patience if early_stopping else None,
                seed,
                progress=progress,
                min_delta=early_stopping_min_delta,
                warmup_epochs=early_stopping_warmup_epochs,
            )
        self.is_trained = True

    @torch.no_grad()
    def predict(self, soft: bool = True, include_simulated_doublets: bool = False, return_logits: bool = False):
        """Per real cell (and simulated doublet with ``include_simulated_doublets``): a DataFrame of the
        probabilities (columns "doublet", "singlet"; logits with ``return_logits``) or, with
        ``soft=False``, a Series of the predicted labels. Index: the cells' names."""
        self.module.eval()
        logits = torch.cat([self.module(self._X[lo : lo + 4096]) for lo in range(0, len(self._X), 4096)])
        values = logits if return_logits else torch.softmax(logits, dim=-1)
        labels = self.adata.obs[self.adata.uns[SETUP_KEY]["labels_key"]].astype(str).to_numpy()
        keep = np.ones(len(labels), bool) if include_simulated_doublets else labels == "singlet"
        out = pd.DataFrame(values.numpy()[keep], columns=self.classes, index=self.adata.obs_names[keep])
        return out if soft else out.idxmax(axis=1)

    def save(self, dir_path, overwrite: bool = False, save_anndata: bool = True) -> None:
        """Save the classifier (``model.safetensors``), its settings and history (``model.json``) and its
        features with their singlet/doublet labels (``adata.h5ad``, cells x (n_latent + 1): small, and
        what :meth:`predict` reads, so always written; ``save_anndata`` is accepted for scvi-tools' call)."""
        _files.write_folder(dir_path, overwrite, self.module, _files.model_meta(self, "SOLO", None), self.adata)

    @classmethod
    def load(cls, dir_path, adata=None) -> SOLO:
        """Load a SOLO saved with :meth:`save` (JSON and safetensors only: no code from the folder runs).
        ``adata``: features set up with :meth:`setup_anndata` instead of the saved ones."""
        meta = _files.read_meta(dir_path)
        if meta["model_class"] != "SOLO":
            raise ModelFileError(f"{dir_path} holds a {meta['model_class']} model, not SOLO.")
        adata = _files.read_saved_adata(dir_path, meta) if adata is None else adata
        try:
            solo = cls(adata, **meta["init_params"])
        except (TypeError, ValueError) as exc:
            raise ModelFileError(f"{dir_path}: the saved init_params do not fit SOLO ({exc!s:.200}).") from exc
        _files.load_weights_into(solo.module, dir_path, meta)
        solo.module.eval()
        solo.is_trained = bool(meta.get("is_trained", True))
        history = _files.saved_history(meta)
        if history is not None:
            solo.history = history
        return solo

    def __repr__(self) -> str:
        n_sim = int((self._y == 0).sum())
        return f"SOLO: {len(self._y) - n_sim} cells, {n_sim} simulated doublets; trained: {self.is_trained}"
