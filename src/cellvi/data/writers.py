"""Write per-cell results (latent spaces, normalized expression) to an .h5ad block by block.

Outputs of millions of cells do not fit in memory; :func:`write_rows` streams them into a dense
float32 array of a new (or an earlier output) .h5ad file with h5py, in the layout anndata reads
(``encoding-type: array``), so ``anndata.read_h5ad(path, backed="r")`` opens the result.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InvalidParameterError, ModelFileError

ARRAY_ATTRS = {"encoding-type": "array", "encoding-version": "0.2.0"}


def write_rows(
    path,
    group: str,
    key: str,
    blocks: Iterable[np.ndarray],
    n_cols: int,
    obs: pd.DataFrame,
    var_names,
    source=None,
    overwrite: bool = False,
) -> str:
    """Write consecutive row blocks (each (b, n_cols)) to ``path``'s ``group/key`` ("obsm" or "layers").

    ``path`` is created with ``obs`` (the cells), ``var`` indexed by ``var_names`` and no X; if it exists
    it must have the same cells (obs names) and, for a layer, the same genes. ``source`` (the input
    file's path, if any) must not be ``path``: the input is never modified. ``overwrite`` replaces an
    existing ``key``. The rows must total ``len(obs)``; otherwise the partial array is deleted and an
    error raised. Returns ``path`` as a string.
    """
    import anndata as ad
    import h5py
    from anndata.io import read_elem

    path = Path(path)
    if group not in ("obsm", "layers"):
        raise InvalidParameterError(f"group must be 'obsm' or 'layers', got {group!r}.")
    if not str(path).endswith(".h5ad"):
        raise InvalidParameterError(f"path must end with .h5ad, got {str(path)!r}.")
    if source is not None and path.exists() and os.path.samefile(path, source):
        raise InvalidParameterError(f"{path} is the input file; cellvi never writes into its input. Pick a new path.")
    n = len(obs)
    created = not path.exists()
    if created:
        ad.AnnData(obs=obs, var=pd.DataFrame(index=pd.Index(list(var_names), dtype=str))).write_h5ad(path)
    with h5py.File(path, "a", rdcc_nbytes=64 * 2**20) as f:
        if not created:
            _check_same_cells(f, obs.index, path)
        if group == "layers" and read_elem(f["var"]).index.tolist() != list(var_names):
            raise ModelFileError(f"{path} exists and holds other genes; write to a new path.")
        parent = f.require_group(group)
        if key in parent:
            if not overwrite:
                raise ModelFileError(f"{path} already has {group}[{key!r}]; pass overwrite=True to replace it.")
            del parent[key]
        # ~1 MB HDF5 chunks of a power-of-two number of rows: minibatch writes then fill whole chunks
        rows = 2 ** int(np.log2(max(1, 2**18 // max(n_cols, 1))))
        ds = parent.create_dataset(key, shape=(n, n_cols), dtype=np.float32, chunks=(max(1, min(n, rows)), n_cols))
        ds.attrs.update(ARRAY_ATTRS)
        pos = 0
        try:
            for block in blocks:
                ds[pos : pos + len(block)] = block
                pos += len(block)
            if pos != n:
                raise RuntimeError(f"{pos} rows were produced for {n} cells")
        except BaseException:
            del parent[key]  # no half-written result is left behind
            raise
    return str(path)


def _check_same_cells(f, names: pd.Index, path, chunk: int = 1_000_000) -> None:
    """Raise unless the file's obs names are ``names``, in order. Compared a chunk at a time: reading
    the whole obs of 10 million cells back held ~1 GB."""
    index = f["obs"][f["obs"].attrs["_index"]].asstr()
    if len(index) != len(names):
        raise ModelFileError(f"{path} exists and holds other cells ({len(index)}); write to a new path.")
    for a in range(0, len(names), chunk):
        if not np.array_equal(index[a : a + chunk], names[a : a + chunk].to_numpy(dtype=object)):
            raise ModelFileError(f"{path} exists and holds other cells (from cell {a} on); write to a new path.")
