"""The saved-model folder: ``model.json`` (hyper-parameters, registry, history), ``model.safetensors``
(weights) and optionally ``adata.h5ad``. Reading it never unpickles anything."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import anndata
import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .. import __version__
from ..data import Registry
from ..errors import ModelFileError

FORMAT = "cellvi-model/1"
META_NAME = "model.json"
WEIGHTS_NAME = "model.safetensors"
ADATA_NAME = "adata.h5ad"
MAX_META_BYTES = 64 * 1024 * 1024
REQUIRED_KEYS = ("format", "cellvi_version", "model_class", "init_params", "registry")


@contextmanager
def staged_folder(dir_path: str | os.PathLike, overwrite: bool):
    """Yield a temporary folder beside ``dir_path``; on success it replaces ``dir_path`` by renames."""
    final = Path(dir_path)
    if final.exists() and not overwrite:
        raise ModelFileError(f"{final} already exists. Pass overwrite=True to replace it.")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.saving-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
            os.replace(final, old / "model")
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def model_meta(model, model_class: str, registry: dict | None, **more) -> dict:
    """The ``model.json`` description of ``model`` (its ``init_params``, ``is_trained`` and ``history``),
    as :func:`write_folder` writes it."""
    history = model.history
    return {
        "format": FORMAT,
        "cellvi_version": __version__,
        "model_class": model_class,
        "init_params": model.init_params,
        "registry": registry,
        "is_trained": model.is_trained,
        "history": json.loads(history.reset_index().to_json(orient="records")) if len(history) else [],
        **more,
    }


def saved_history(meta: dict) -> pd.DataFrame | None:
    """The training history that :func:`model_meta` recorded (None when there was none)."""
    return pd.DataFrame(meta["history"]).set_index("epoch") if meta.get("history") else None


def write_folder(dir_path, overwrite: bool, module: torch.nn.Module, meta: dict, adata=None) -> None:
    """Write a model folder: the module's weights, ``adata`` when given, and ``meta`` with the SHA-256 of
    those files, staged beside ``dir_path`` and renamed into place (:func:`staged_folder`)."""
    with staged_folder(dir_path, overwrite) as tmp:
        write_weights(tmp, module.state_dict())
        names = [WEIGHTS_NAME]
        if adata is not None:
            adata.write_h5ad(tmp / ADATA_NAME)
            names.append(ADATA_NAME)
        meta["sha256"] = {name: sha256(tmp / name) for name in names}
        (tmp / META_NAME).write_text(json.dumps(meta, indent=1))


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_digest(path: Path, meta: dict | None) -> None:
    """Compare ``path`` with the SHA-256 that ``save`` recorded in ``model.json``. This catches accidental
    corruption that leaves a file readable (flipped bytes in the weights); files saved without a digest
    are not checked."""
    digests = (meta or {}).get("sha256")
    expected = digests.get(path.name) if isinstance(digests, dict) else None
    if expected is not None and sha256(path) != expected:
        raise ModelFileError(
            f"{path} is corrupted: its SHA-256 differs from the one recorded when it was saved. "
            "Restore the file from a backup, or save the model again."
        )


def registry_of(meta: dict, dir_path) -> Registry:
    """The data registry recorded in ``model.json``."""
    try:
        return Registry(**meta["registry"])
    except TypeError as exc:
        raise ModelFileError(f"{dir_path}/{META_NAME} has an invalid registry ({exc}); save the model again.") from exc


def write_weights(folder: Path, state_dict: dict) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": FORMAT})


def read_meta(dir_path: str | os.PathLike) -> dict:
    """Read and check ``model.json``; raise :class:`ModelFileError` with the reason otherwise."""
    folder = Path(dir_path)
    if not folder.is_dir():
        raise ModelFileError(f"No saved model at {folder}: the folder does not exist.")
    path = folder / META_NAME
    if not path.is_file():
        raise ModelFileError(f"{folder} is not a cellvi model folder: {META_NAME} is missing.")
    if path.stat().st_size > MAX_META_BYTES:
        raise ModelFileError(f"{path} is implausibly large; refusing to read it.")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path} is corrupted or not a cellvi model file ({exc}).") from exc
    if not isinstance(meta, dict) or any(k not in meta for k in REQUIRED_KEYS):
        raise ModelFileError(f"{path} is not a cellvi model description (missing fields).")
    if meta["format"] != FORMAT:
        raise ModelFileError(
            f"{folder} was saved in format {meta['format']!r} by cellvi {meta['cellvi_version']}; this cellvi "
            f"({__version__}) reads {FORMAT!r}. Load it with that version, or retrain."
        )
    if meta["cellvi_version"] != __version__:
        warnings.warn(
            f"Model saved by cellvi {meta['cellvi_version']}, loading with {__version__} (same file format).",
            stacklevel=3,
        )
    return meta


def read_saved_adata(dir_path: str | os.PathLike, meta: dict | None = None):
    path = Path(dir_path) / ADATA_NAME
    if not path.is_file():
        raise ModelFileError(
            f"{dir_path} holds no AnnData (it was saved with save_anndata=False); pass adata= to load()."
        )
    check_digest(path, meta)
    try:
        return anndata.read_h5ad(path)
    except Exception as exc:
        raise ModelFileError(f"Cannot read {path}: {exc}") from exc


def load_weights_into(module: torch.nn.Module, dir_path: str | os.PathLike, meta: dict | None = None) -> None:
    """Load ``model.safetensors`` into ``module``; names and shapes must match exactly."""
    path = Path(dir_path) / WEIGHTS_NAME
    if not path.is_file():
        raise ModelFileError(f"{dir_path} is incomplete: {WEIGHTS_NAME} is missing.")
    check_digest(path, meta)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"{path} is corrupted or truncated ({exc}).") from exc
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [k for k in expected if k in tensors and tensors[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise ModelFileError(
            f"{path} does not fit this model: missing {missing[:3]}, unexpected {unexpected[:3]}, "
            f"wrong shapes {wrong[:3]}."
        )
    module.load_state_dict(tensors, strict=True)
