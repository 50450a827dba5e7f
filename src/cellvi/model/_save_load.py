"""Saving and loading a model: cellvi's folder (safetensors + JSON), one checksummed zip, or scvi-tools'
format. Loading reads JSON and safetensors only (or scvi-tools' pickle through a restricted reader): no
code from a model file is ever executed.

Mixed into :class:`cellvi.model.base.BaseModel`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pandas as pd
import torch

from .._settings import settings
from ..errors import InvalidParameterError, ModelFileError
from ..train import distributed
from . import _archive, _files

if TYPE_CHECKING:
    from ..data import Registry
    from ..module import VAE

ModelT = TypeVar("ModelT", bound="SaveLoadMixin")


class SaveLoadMixin:
    """``save`` and ``load`` of a model, and the hooks by which a subclass saves more state."""

    if TYPE_CHECKING:
        adata: Any
        registry: Registry
        module: VAE
        init_params: dict
        is_trained: bool
        history: pd.DataFrame

        def _init(self, adata, registry: Registry, init_params: dict) -> None: ...

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
        registry = json.loads(self.registry.to_json())
        meta = _files.model_meta(self, type(self).__name__, registry, extras=self._saved_extras())
        adata = self.adata if save_anndata else None
        distributed.on_main(lambda: _files.write_folder(dir_path, overwrite, self.module, meta, adata))

    def _save_archive(self, final: Path, overwrite: bool, save_anndata: bool) -> None:
        """Write the model as one checksummed zip (see ``save(archive=True)``)."""
        if final.exists() and not overwrite:
            raise ModelFileError(f"{final} already exists. Pass overwrite=True to replace it.")
        with distributed.local(), tempfile.TemporaryDirectory(prefix=f".{final.name}.saving-") as tmp:
            self.save(Path(tmp) / "model", save_anndata=save_anndata)
            _archive.write_archive(final, Path(tmp) / "model", overwrite)

    @classmethod
    def load(
        cls: type[ModelT],
        dir_path: str | os.PathLike,
        adata=None,
        device: str | int | None = None,
        accelerator: str = "auto",
    ) -> ModelT:
        """Load a model saved with :meth:`save`. ``adata`` must have the saved genes (in order) and
        known categories; when None, the AnnData saved in the folder is used. ``dir_path`` may also be an
        archive written by ``save(..., archive=True)`` (checked against its manifest first). Loading only
        reads JSON and safetensors: no code from the folder is ever executed.

        A folder saved by scvi-tools 1.x (``model.pt``) is read too, without executing anything from it
        (see :mod:`cellvi.model._scvi_tools_format` and docs/switching.md). ``device``: where to put it
        (default ``settings.device``; ``"auto"`` too; a GPU index is ``"cuda:<index>"``); ``accelerator``
        ("auto", "cpu", "gpu"/"cuda"), as scvi-tools."""
        from . import _scvi_tools_format

        if accelerator not in ("auto", "cpu", "gpu", "cuda"):
            raise InvalidParameterError(f"accelerator must be 'auto', 'cpu', 'gpu' or 'cuda', got {accelerator!r}.")
        if device == "auto" or device is None:
            device = None if accelerator == "auto" else ("cpu" if accelerator == "cpu" else "cuda")
        elif isinstance(device, int):
            device = f"cuda:{device}"
        if device is not None and str(device).startswith("cuda") and not torch.cuda.is_available():
            raise InvalidParameterError(f"Cannot load onto {device}: this machine has no CUDA GPU.")

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
        history = _files.saved_history(meta)
        if history is not None:
            model.history = history
        model._restore_extras(meta.get("extras") or {})
        return model

    def _saved_extras(self) -> dict:
        """JSON-serialisable state beyond the weights that a subclass saves with the model (e.g. SCANVI's
        calibration); given back to :meth:`_restore_extras` by :meth:`load` and ``load_query_data``."""
        return {}

    def _restore_extras(self, extras: dict) -> None:
        pass
