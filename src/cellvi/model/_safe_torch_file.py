"""Read a ``torch.save`` file (as scvi-tools writes ``model.pt``) without executing anything from it.

``torch.save`` writes a zip holding ``data.pkl``, a pickle, and the raw bytes of each tensor. A pickle
can call any importable function; here a restricted unpickler resolves only an explicit allow-list of
names: plain containers, NumPy arrays and dtypes, and tensors (rebuilt by this module from the raw bytes,
never by torch's own rebuild functions). Anything else is refused with a :class:`ModelFileError` naming
it, before it could run.

scvi-tools also pickles its training history as pandas DataFrames. pandas' reconstruction functions are
*not* called: those names resolve to :class:`Opaque`, an inert record of the arguments (the history is
then decoded from those records by :func:`opaque_frame_columns`, without pandas).
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..errors import ModelFileError

MAX_PICKLE_BYTES = 256 * 1024 * 1024

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class _StorageType:
    """Stands for ``torch.<X>Storage`` in the pickle: only its dtype is used."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


class _Storage:
    def __init__(self, data: bytes, dtype: torch.dtype) -> None:
        self.data, self.dtype = data, dtype


class Opaque:
    """An inert stand-in for a pandas object in the pickle: it only records what it was given."""

    name = "Opaque"
    args: tuple = ()
    kwargs: dict | None = None
    state = None

    def __init__(self, *args, **kwargs) -> None:
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state) -> None:
        self.state = state


def _opaque_class(name: str):
    """A fresh subclass of Opaque named after the pandas class (DataFrame, Index, BlockManager)."""
    return type(name, (Opaque,), {"name": name})


def _rebuild_tensor(storage: _Storage, offset: int, size, stride, requires_grad=False, hooks=None, *meta):
    if not isinstance(storage, _Storage):
        raise ModelFileError("model.pt: a tensor refers to something that is not a stored tensor.")
    flat = (
        torch.frombuffer(bytearray(storage.data), dtype=storage.dtype)
        if storage.data
        else torch.empty(0, dtype=storage.dtype)
    )
    return torch.as_strided(flat, tuple(size), tuple(stride), offset).clone()


def _rebuild_parameter(data, requires_grad=False, hooks=None, *rest):
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): collections.defaultdict,
    ("builtins", "dict"): dict,
    ("__builtin__", "dict"): dict,
    ("builtins", "list"): list,
    ("__builtin__", "list"): list,
    ("builtins", "set"): set,
    ("__builtin__", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "frozenset"): frozenset,
    ("builtins", "tuple"): tuple,
    ("__builtin__", "tuple"): tuple,
    ("builtins", "slice"): slice,
    ("__builtin__", "slice"): slice,
    ("builtins", "bytes"): bytes,
    ("__builtin__", "bytes"): bytes,
    ("builtins", "bytearray"): bytearray,
    ("__builtin__", "bytearray"): bytearray,
    ("builtins", "str"): str,
    ("builtins", "int"): int,
    ("builtins", "float"): float,
    ("builtins", "complex"): complex,
    ("builtins", "bool"): bool,
    ("_codecs", "encode"): lambda text, encoding="utf-8": str(text).encode(str(encoding)),
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}
_reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's own array reconstructor, whatever its module
_scalar = np.float32(0).__reduce__()[0]
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_mod, "_reconstruct")] = _reconstruct
    _ALLOWED[(_mod, "scalar")] = _scalar

# pandas objects (scvi-tools' history) become inert records; nothing of pandas runs
_OPAQUE = {
    ("pandas.core.frame", "DataFrame"),
    ("pandas.core.series", "Series"),
    ("pandas.core.indexes.base", "Index"),
    ("pandas.core.indexes.base", "_new_Index"),
    ("pandas.core.indexes.range", "RangeIndex"),
    ("pandas.core.internals.managers", "BlockManager"),
    ("pandas.core.internals.managers", "SingleBlockManager"),
    ("pandas._libs.internals", "_unpickle_block"),
    ("pandas.core.internals.blocks", "new_block"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, path) -> None:
        super().__init__(file)
        self.archive, self.prefix, self.path = archive, prefix, path

    def find_class(self, module: str, name: str):
        if (module, name) in _OPAQUE:
            return _opaque_class(name)
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        found = _ALLOWED.get((module, name))
        if found is None:
            raise ModelFileError(
                f"{self.path} contains the object {module}.{name}, which cellvi does not load: a model file "
                "may hold only tensors, NumPy arrays and plain containers (it was not executed). Load it "
                "only if you trust its source, with scvi-tools, and save it again."
            )
        return found

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise ModelFileError(f"{self.path}: unexpected persistent reference {str(pid)[:80]!r}.")
        storage_type, key = pid[1], str(pid[2])
        if not isinstance(storage_type, _StorageType):
            raise ModelFileError(f"{self.path}: a tensor has an unsupported storage type.")
        try:
            data = self.archive.read(f"{self.prefix}/data/{key}")
        except KeyError as exc:
            raise ModelFileError(f"{self.path} is incomplete: tensor data {key} is missing.") from exc
        return _Storage(data, storage_type.dtype)


def load(path: str | Path):
    """The object saved in the ``torch.save`` zip file ``path``, read without executing anything."""
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelFileError(
            f"{path} is not a zip-format torch file ({exc}); cellvi reads scvi-tools files saved by torch>=1.6."
        ) from exc
    with archive:
        names = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(names) != 1:
            raise ModelFileError(f"{path} is not a torch.save file (no data.pkl).")
        info = archive.getinfo(names[0])
        if info.file_size > MAX_PICKLE_BYTES:
            raise ModelFileError(f"{path}: data.pkl is implausibly large; refusing to read it.")
        byteorder = f"{names[0].split('/')[0]}/byteorder"
        if byteorder in archive.namelist() and archive.read(byteorder).strip() not in (b"little", b""):
            raise ModelFileError(f"{path} was saved on a big-endian machine; cellvi reads little-endian files.")
        blob = archive.read(names[0])
        unpickler = _RestrictedUnpickler(io.BytesIO(blob), archive, names[0].split("/")[0], path)
        try:
            return unpickler.load()
        except ModelFileError:
            raise
        except Exception as exc:  # malformed pickle: never half-read
            raise ModelFileError(
                f"{path} is corrupted or not a model file ({type(exc).__name__}: {exc!s:.200})."
            ) from exc


def opaque_frame_columns(obj) -> dict[str, np.ndarray] | None:
    """The columns of a pickled pandas DataFrame read as :class:`Opaque` records, as {name: float64
    values}, or None if it is not in the layout pandas 2 writes (a BlockManager of blocks and axes)."""
    try:
        if not isinstance(obj, Opaque) or not isinstance(obj.state, dict):
            return None
        mgr = obj.state["_mgr"]
        blocks, axes = (mgr.args or mgr.state)[:2]
        columns = axes[0].args[1]["data"]
        out = {}
        for block in blocks:
            values, placement = block.args[0], block.args[1]
            rows = range(len(columns))[placement] if isinstance(placement, slice) else list(placement)
            for i, pos in enumerate(rows):
                out[str(columns[pos])] = np.asarray(values[i], dtype=np.float64)
        return out
    except Exception:  # noqa: BLE001 (another layout: the history is left out, nothing depends on it)
        return None
