"""Shared pieces of the command line: reading inputs, checking them, staged output folders, step timing.

Every check raises a :class:`CliError` (a :class:`cellvi.errors.CellviError`), which ``main`` prints as one
line on stderr; outputs are written to a hidden sibling folder and moved into place only at the end, so a
failed command leaves the user's files as they were.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import time
from pathlib import Path

from ..errors import CellviError, MissingKeyError

#: .h5ad files at least this large (bytes) are opened backed (matrix left on disk). Override with the
#: environment variable CELLVI_BACKED_BYTES.
BACKED_BYTES = 2 * 1024**3
#: Rows checked up front for being counts (the model's setup checks every row again).
_COUNT_CHECK_ROWS = 20_000


class CliError(CellviError, ValueError):
    """A user mistake on the command line (missing file, existing output folder...)."""


def backed_threshold() -> int:
    return int(os.environ.get("CELLVI_BACKED_BYTES", BACKED_BYTES))


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def read_input(path: str | os.PathLike, layer: str | None = None):
    """Read single-cell data with anndata/scanpy's own readers: ``.h5ad`` (backed at or above
    :func:`backed_threshold` bytes), 10x ``.h5``, a 10x matrix folder (``matrix.mtx[.gz]``) or ``.zarr``.
    Returns an AnnData; raises :class:`CliError` for a missing, unreadable or non-single-cell input."""
    import anndata
    import scanpy as sc

    p = Path(path)
    if not p.exists():
        raise CliError(f"no such file or folder: {p}")
    name = p.name.lower()
    try:
        if name.endswith(".zarr"):
            adata = anndata.read_zarr(p)
        elif p.is_dir():
            if not any((p / f).exists() for f in ("matrix.mtx", "matrix.mtx.gz")):
                raise CliError(f"{p} is a folder but not a 10x matrix folder (no matrix.mtx[.gz]) nor .zarr")
            adata = sc.read_10x_mtx(p)
        elif name.endswith(".h5ad"):
            backed = p.stat().st_size >= backed_threshold()
            adata = anndata.read_h5ad(p, backed="r" if backed else None)
        elif name.endswith(".h5"):
            adata = sc.read_10x_h5(p)
        else:
            raise CliError(f"{p}: unsupported input; give an .h5ad, a 10x .h5, a 10x matrix folder or a .zarr")
    except CliError:
        raise
    except Exception as exc:  # the readers raise many types (OSError, KeyError, ValueError...)
        raise CliError(f"cannot read {p} as single-cell data: {_short(exc)}") from exc
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise CliError(f"{p} holds no cells or no genes ({adata.n_obs} x {adata.n_vars}): not single-cell data")
    if not adata.var_names.is_unique:
        adata.var_names_make_unique()
    check_counts(adata, layer, p)
    return adata


def check_counts(adata, layer: str | None, source) -> None:
    """Raise :class:`CliError` unless the first rows of the count matrix are non-negative integers."""
    from ..data.matrix import count_matrix, iter_row_chunks, validate_counts_chunk

    try:
        X = count_matrix(adata, layer)
        validate_counts_chunk(next(iter_row_chunks(X, min(_COUNT_CHECK_ROWS, adata.n_obs))), 0, layer)
    except CellviError as exc:
        where = f"layer {layer!r}" if layer else "X"
        raise CliError(f"{source}: {where} does not hold raw counts: {_short(exc)}") from exc


def subset_counts(adata, cols, layer: str | None, obs_keys):
    """An in-memory AnnData of the counts of genes ``cols`` (positions; CSR float32 in X) and the
    ``obs_keys`` columns (None entries skipped). Backed or dense inputs are read in chunks of rows."""
    import anndata
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    from ..data.matrix import count_matrix, iter_row_chunks

    X = count_matrix(adata, layer)
    cols = np.asarray(cols)
    if adata.isbacked or not sp.issparse(X):
        parts = [sp.csr_matrix(c[:, cols], dtype=np.float32) for c in iter_row_chunks(X)]
        Xt = sp.vstack(parts, format="csr")
    else:
        Xt = sp.csr_matrix(X[:, cols], dtype=np.float32)
    keys = list(dict.fromkeys(k for k in obs_keys if k))
    obs = adata.obs[keys].copy() if keys else pd.DataFrame(index=adata.obs_names)
    return anndata.AnnData(Xt, obs=obs, var=pd.DataFrame(index=adata.var_names[cols]))


def check_obs_key(adata, key: str | None, option: str) -> None:
    if key is not None and key not in adata.obs.columns:
        cols = ", ".join(map(str, adata.obs.columns[:20])) or "none"
        raise MissingKeyError(f"{option} {key!r} is not a column of obs (columns: {cols})")


def model_dir(path: str | os.PathLike) -> Path:
    """A saved model folder, or a ``cellvi run`` output folder holding one in ``model/``."""
    p = Path(path)
    if (p / "model" / "model.json").is_file():
        return p / "model"
    if not (p / "model.json").is_file():
        raise CliError(f"{p} is not a cellvi model folder (no model.json) nor a cellvi run output")
    return p


def check_new_path(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise CliError(f"{path} already exists; pass --overwrite to replace it")


@contextlib.contextmanager
def staged_dir(out: Path, overwrite: bool):
    """Yield a fresh hidden folder beside ``out``; on success it replaces ``out``, on failure it is removed."""
    check_new_path(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
    else:
        tmp.rename(out)


@contextlib.contextmanager
def staged_file(out: Path, overwrite: bool):
    """Yield a temporary path beside ``out``, renamed to ``out`` on success."""
    check_new_path(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}{out.suffix}"
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out)


def peak_rss_mib() -> float:
    """Peak resident memory of this process (MiB): the kernel's ``VmHWM`` where /proc has it, the peak
    since the process started or since :class:`Steps` last reset the mark.

    Not ``ru_maxrss`` there: Linux carries that over from the parent through fork and exec, so a run
    started by a process that once held 3 GB would report at least 3 GB (ru_maxrss is the fallback)."""
    now_and_peak = _rss_now_and_peak()
    if now_and_peak is not None:
        return now_and_peak[1]
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_now_and_peak() -> tuple[float, float] | None:
    """(current, peak since the last reset) resident memory in MiB, from /proc (Linux), else None."""
    try:
        with open("/proc/self/status") as f:
            vals = {k: int(v.split()[0]) / 1024 for k, v in (ln.split(":", 1) for ln in f if ln.startswith("Vm"))}
        return vals["VmRSS"], vals["VmHWM"]
    except (OSError, KeyError, ValueError):
        return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux ``clear_refs`` 5); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Steps:
    """Times named steps, prints them on stdout and keeps rows of name, seconds, ``peak_rss_mib`` (the
    process's peak so far, MiB) and, on Linux, ``step_peak_rss_mib`` (the peak within the step) and
    ``rss_mib`` (resident at the step's end): the kernel's peak mark is reset at each step's start."""

    def __init__(self, quiet: bool = False) -> None:
        self.rows: list[dict] = []
        self.quiet = quiet
        self._peak = peak_rss_mib()

    @contextlib.contextmanager
    def step(self, name: str):
        if not self.quiet:
            print(f"cellvi: {name} ...", flush=True)
        before = _rss_now_and_peak()
        if before is not None:
            self._peak = max(self._peak, before[1])
        reset = before is not None and _reset_peak_rss()
        start = time.perf_counter()
        yield
        row = {"step": name, "seconds": round(time.perf_counter() - start, 2)}
        after = _rss_now_and_peak() if reset else None
        if after is None:
            row["peak_rss_mib"] = round(max(self._peak, peak_rss_mib()), 1)
        else:
            self._peak = max(self._peak, after[1])
            row.update(
                peak_rss_mib=round(self._peak, 1), step_peak_rss_mib=round(after[1], 1), rss_mib=round(after[0], 1)
            )
        self.rows.append(row)
