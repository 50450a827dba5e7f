"""The data registry: what ``setup_anndata`` records and checks, and how AnnData becomes arrays.

``Registry.from_anndata`` validates an AnnData (counts, keys, covariates) and records the gene names,
the category of every categorical covariate and summary statistics. It is saved with a model as JSON
and applied to every AnnData given later (:meth:`Registry.cell_data`), so that new data is encoded the
same way or rejected with a clear error. Nothing here touches PyTorch.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import InvalidDataError, MissingKeyError, NotSetUpError, RegistryMismatchError
from .matrix import (
    count_matrix,
    is_on_disk,
    iter_row_chunks,
    mark_counts_checked,
    validate_counts_chunk,
)

REGISTRY_KEY = "_cellvi_registry"
REGISTRY_VERSION = 1
MINIFIED_KEY = "_cellvi_minified"  # in uns of an AnnData made by minify_adata


@dataclass
class CellData:
    """The arrays of one AnnData encoded by a registry; what the data loaders read.

    X: (n_cells, n_genes) counts: scipy CSR, a NumPy array, or an on-disk (backed) matrix.
    batch, labels: (n_cells,) int32 codes (the loaders give int64 tensors; int32 halves what 10 million
    cells hold). cat_covs: (n_cells, n_extra_categorical) int32 or None.
    cont_covs: (n_cells, n_continuous) float32 or None. size_factor: (n_cells,) float32 or None.
    """

    X: Any
    batch: np.ndarray
    labels: np.ndarray
    cat_covs: np.ndarray | None = None
    cont_covs: np.ndarray | None = None
    size_factor: np.ndarray | None = None
    obs_names: pd.Index | None = None
    cached: dict | None = None  # minified data: per-cell qz_m, qz_v (n_cells, n_latent), observed_lib_size

    @property
    def n_cells(self) -> int:
        return int(self.X.shape[0])


@dataclass
class Registry:
    """What ``setup_anndata`` recorded. Serialisable to JSON (:meth:`to_json`)."""

    setup_args: dict
    var_names: list[str]
    categories: dict[str, list[str]]  # "batch", "labels", then each extra categorical key
    continuous_keys: list[str] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    model_name: str = "SCVI"
    version: int = REGISTRY_VERSION

    # ------------------------------------------------------------------ building and (de)serialising
    @classmethod
    def from_anndata(
        cls,
        adata,
        layer: str | None = None,
        batch_key: str | None = None,
        labels_key: str | None = None,
        size_factor_key: str | None = None,
        categorical_covariate_keys: list[str] | None = None,
        continuous_covariate_keys: list[str] | None = None,
        model_name: str = "SCVI",
        extra_args: dict | None = None,
        *,
        shard: tuple[int, int] = (0, 1),
        sum_over_shards: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> Registry:
        """Validate ``adata`` and record its registry. Raises a :class:`cellvi.errors.CellviError`.

        ``shard`` = (index, count), ``sum_over_shards``: with several data-parallel processes, each reads
        and checks only its share of the rows of an on-disk matrix, and ``sum_over_shards`` (an
        all-reduce) adds up the library-size statistics (see :mod:`cellvi.train.distributed`)."""
        if adata.n_obs == 0 or adata.n_vars == 0:
            raise InvalidDataError(
                f"The AnnData is empty ({adata.n_obs} cells x {adata.n_vars} genes); cellvi needs at least "
                "one cell and one gene."
            )
        if not adata.var_names.is_unique:
            dup = adata.var_names[adata.var_names.duplicated()].unique()[:5].tolist()
            raise InvalidDataError(
                f"Gene names are duplicated (e.g. {dup}). Make them unique first: adata.var_names_make_unique()."
            )
        cat_keys = list(categorical_covariate_keys or [])
        cont_keys = list(continuous_covariate_keys or [])
        for key in [batch_key, labels_key, size_factor_key, *cat_keys, *cont_keys]:
            if key is not None and key not in adata.obs.columns:
                raise MissingKeyError(
                    f"Column {key!r} is not in adata.obs. Available columns: {list(adata.obs.columns)}."
                )
        X = count_matrix(adata, layer)
        categories = {
            "batch": _categories_of(adata.obs, batch_key),
            "labels": _categories_of(adata.obs, labels_key),
        }
        for key in cat_keys:
            categories[key] = _categories_of(adata.obs, key)
        for key in cont_keys:
            _continuous(adata.obs, key)
        if size_factor_key is not None:
            sf = _continuous(adata.obs, size_factor_key)
            if np.any(sf <= 0):
                raise InvalidDataError(f"Size factors in adata.obs[{size_factor_key!r}] must be > 0.")

        batch_codes = _encode(adata.obs, batch_key, categories["batch"], "batch")
        log_lib_sum = np.zeros(len(categories["batch"]))
        log_lib_sq = np.zeros(len(categories["batch"]))
        counts = np.zeros(len(categories["batch"]))
        total = 0.0
        n_empty_cells = 0
        split = is_on_disk(X) and shard[1] > 1 and sum_over_shards is not None
        n = int(X.shape[0])
        start, end = (n * shard[0] // shard[1], n * (shard[0] + 1) // shard[1]) if split else (0, n)
        for chunk in iter_row_chunks(X, first=start, end=end):
            validate_counts_chunk(chunk, start, layer)
            lib = np.asarray(chunk.sum(axis=1)).ravel()
            total += lib.sum()
            n_empty_cells += int((lib == 0).sum())
            codes = batch_codes[start : start + len(lib)]
            log_lib = np.log(np.maximum(lib, 1.0))
            np.add.at(log_lib_sum, codes, log_lib)
            np.add.at(log_lib_sq, codes, log_lib**2)
            np.add.at(counts, codes, 1)
            start += len(lib)
        if split and sum_over_shards is not None:  # (split implies it; said again for the type checker)
            k = len(counts)
            sums = sum_over_shards(np.concatenate([[total, n_empty_cells], log_lib_sum, log_lib_sq, counts]))
            total, n_empty_cells = float(sums[0]), int(sums[1])
            log_lib_sum, log_lib_sq, counts = sums[2 : 2 + k], sums[2 + k : 2 + 2 * k], sums[2 + 2 * k :]
        if is_on_disk(X):
            mark_counts_checked(X)  # the loaders need not check this file again while it is unchanged
        if total == 0:
            raise InvalidDataError(
                "Every count is zero: there is nothing to learn. Check that the matrix (or layer) holds raw counts."
            )
        means = log_lib_sum / np.maximum(counts, 1)
        variances = np.maximum(log_lib_sq / np.maximum(counts, 1) - means**2, 1e-4)
        summary = {
            "n_cells": int(adata.n_obs),
            "n_vars": int(adata.n_vars),
            "n_batch": len(categories["batch"]),
            "n_labels": len(categories["labels"]),
            "n_cats_per_cov": [len(categories[k]) for k in cat_keys],
            "n_continuous": len(cont_keys),
            "n_empty_cells": n_empty_cells,
            "library_log_means": means.tolist(),
            "library_log_vars": variances.tolist(),
        }
        setup_args = {
            "layer": layer,
            "batch_key": batch_key,
            "labels_key": labels_key,
            "size_factor_key": size_factor_key,
            "categorical_covariate_keys": cat_keys,
            "continuous_covariate_keys": cont_keys,
            **(extra_args or {}),
        }
        return cls(setup_args, [str(v) for v in adata.var_names], categories, cont_keys, summary, model_name)

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> Registry:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("version") != REGISTRY_VERSION:
            raise RegistryMismatchError(
                f"The registry has version {data.get('version') if isinstance(data, dict) else None}; "
                f"this cellvi reads version {REGISTRY_VERSION}. Re-run setup_anndata."
            )
        return cls(**data)

    def attach(self, adata) -> None:
        """Store the registry in ``adata.uns`` (as a JSON string, so the AnnData stays writable to h5ad)."""
        adata.uns[REGISTRY_KEY] = self.to_json()

    @classmethod
    def of(cls, adata) -> Registry:
        """The registry stored in ``adata`` by ``setup_anndata``."""
        if REGISTRY_KEY not in adata.uns:
            raise NotSetUpError("This AnnData was not set up. Call cellvi.model.SCVI.setup_anndata(adata, ...) first.")
        return cls.from_json(adata.uns[REGISTRY_KEY])

    def describe(self) -> str:
        """A plain-text summary of the setup: the arguments of ``setup_anndata``, the data's size and
        each categorical field's categories in code order (what ``view_anndata_setup`` prints)."""
        s = self.summary
        lines = [f"Set up for {self.model_name}: {s['n_cells']} cells x {s['n_vars']} genes"]
        lines += [f"  {k}: {v!r}" for k, v in self.setup_args.items() if v not in (None, [], {})]
        for name, key in self._categorical_fields():
            cats = self.categories[name]
            source = f"adata.obs[{key!r}]" if key is not None else "none given: one category"
            shown = ", ".join(f"{i}: {c}" for i, c in enumerate(cats[:20]))
            more = f", ... ({len(cats)} in all)" if len(cats) > 20 else ""
            lines.append(f"  {name} ({source}): {shown}{more}")
        for key in self.continuous_keys:
            lines.append(f"  continuous covariate: adata.obs[{key!r}]")
        if s.get("n_empty_cells"):
            lines.append(f"  cells with no counts: {s['n_empty_cells']}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ encoding data
    @property
    def extra_categorical_keys(self) -> list[str]:
        return list(self.setup_args["categorical_covariate_keys"])

    def new_categories(self, adata) -> dict[str, list[str]]:
        """Categories in ``adata`` that the registry does not know, per categorical field."""
        out = {}
        for name, key in self._categorical_fields():
            if key is None:
                continue
            seen = _categories_of(adata.obs, key)
            out[name] = [c for c in seen if c not in set(self.categories[name])]
        return out

    def _categorical_fields(self):
        yield "batch", self.setup_args["batch_key"]
        yield "labels", self.setup_args["labels_key"]
        for key in self.extra_categorical_keys:
            yield key, key

    def check_genes(self, adata) -> None:
        """Raise unless ``adata`` has exactly the registered genes in the registered order."""
        names = [str(v) for v in adata.var_names]
        if names == self.var_names:
            return
        ref = set(self.var_names)
        missing = [g for g in self.var_names if g not in set(names)]
        extra = [g for g in names if g not in ref]
        if not missing and not extra:
            raise RegistryMismatchError(
                "The genes match the model's but are in another order. Reorder them: "
                "adata = adata[:, model.adata.var_names] (or prepare_query_anndata)."
            )
        raise RegistryMismatchError(
            f"The data's genes differ from the model's: {len(missing)} of the model's {len(self.var_names)} "
            f"genes are missing (e.g. {missing[:3]}) and {len(extra)} are extra (e.g. {extra[:3]}). "
            "Subset and reorder to the model's genes; Model.prepare_query_anndata pads missing genes."
        )

    def cell_data(self, adata, validate_counts: bool = True) -> CellData:
        """Encode ``adata`` with this registry. Unknown categories or other genes raise a clear error."""
        self.check_genes(adata)
        if adata.n_obs == 0:
            raise InvalidDataError("The AnnData has no cells.")
        args = self.setup_args
        X = count_matrix(adata, args["layer"])
        # an on-disk X stays on disk; OnDiskLoader checks each chunk as it reads it (no extra pass)
        if validate_counts and not is_on_disk(X):
            start = 0
            for chunk in iter_row_chunks(X):
                validate_counts_chunk(chunk, start, args["layer"])
                start += chunk.shape[0]
        if sp.issparse(X) and not sp.isspmatrix_csr(X) and not isinstance(X, sp.csr_array):
            X = sp.csr_matrix(X)  # a copy in row-major form; the user's matrix is untouched
        obs = adata.obs
        batch = _encode(obs, args["batch_key"], self.categories["batch"], "batch")
        labels = _encode(obs, args["labels_key"], self.categories["labels"], "labels")
        cat = None
        if self.extra_categorical_keys:
            cat = np.stack([_encode(obs, k, self.categories[k], k) for k in self.extra_categorical_keys], 1)
        cont = None
        if self.continuous_keys:
            cont = np.stack([_continuous(obs, k) for k in self.continuous_keys], 1).astype(np.float32)
        sf = None
        if args["size_factor_key"] is not None:
            sf = _continuous(obs, args["size_factor_key"]).astype(np.float32)
        cached = None
        if adata.uns.get(MINIFIED_KEY) is not None:  # minified: the latent posterior stands in for the counts
            if args.get("minified_data_type") is None:
                raise NotSetUpError("This AnnData is minified but the model was not: use the model that minified it.")
            cached = {
                "qz_m": _obsm(adata, args["latent_qzm_key"]),
                "qz_v": _obsm(adata, args["latent_qzv_key"]),
                "observed_lib_size": _continuous(obs, args["observed_lib_size_key"]).astype(np.float32),
            }
        return CellData(X, batch, labels, cat, cont, sf, adata.obs_names, cached)


def _category_codes(col: pd.Series) -> tuple[np.ndarray, list[str]]:
    """A categorical column's per-cell codes and its categories as strings: no string per cell (on 10
    million cells ``astype(str)`` held ~1 GB at its peak). anndata stores string columns as categoricals."""
    return col.cat.codes.to_numpy(), [str(c) for c in col.cat.categories]


def _categories_of(obs: pd.DataFrame, key: str | None) -> list[str]:
    if key is None:
        return ["0"]
    if key not in obs.columns:
        raise MissingKeyError(f"Column {key!r} is not in adata.obs. Available columns: {list(obs.columns)}.")
    col = obs[key]
    n_missing = int(col.isna().sum())
    if n_missing:
        raise InvalidDataError(
            f"adata.obs[{key!r}] has {n_missing} missing values (NaN). Fill them (for example with "
            f"'unknown') or remove those cells before setup."
        )
    if isinstance(col.dtype, pd.CategoricalDtype):  # the column's own order of the categories present
        codes, names = _category_codes(col)
        return list(dict.fromkeys(names[i] for i in np.flatnonzero(np.bincount(codes, minlength=len(names)))))
    return sorted(set(col.astype(str).tolist()))


def _encode(obs: pd.DataFrame, key: str | None, categories: list[str], name: str) -> np.ndarray:
    """Integer codes of ``obs[key]`` under the registered categories, (n_cells,) int32."""
    if key is None:
        return np.zeros(len(obs), dtype=np.int32)
    if key not in obs.columns:
        raise MissingKeyError(f"Column {key!r} ({name}) is not in adata.obs.")
    col = obs[key]
    if col.isna().any():
        raise InvalidDataError(f"adata.obs[{key!r}] has missing values (NaN); fill or remove them.")
    if isinstance(col.dtype, pd.CategoricalDtype):
        raw, names = _category_codes(col)
        position = {c: i for i, c in enumerate(categories)}
        codes = np.array([position.get(n, -1) for n in names], dtype=np.int32)[raw]
        unknown = sorted({names[i] for i in np.unique(raw[codes < 0])})[:5]
    else:
        values = col.astype(str).to_numpy()
        codes = pd.Categorical(values, categories=categories).codes.astype(np.int32)
        unknown = sorted(set(values[codes < 0]))[:5]
    if unknown:
        raise RegistryMismatchError(
            f"adata.obs[{key!r}] has categories the model has not seen: {unknown}. Known: {categories[:10]}. "
            "To map new batches onto a trained model use Model.load_query_data."
        )
    return codes


def _obsm(adata, key: str) -> np.ndarray:
    if key not in adata.obsm:
        raise MissingKeyError(f"adata.obsm[{key!r}] (the minified latent posterior) is missing.")
    return np.ascontiguousarray(adata.obsm[key], dtype=np.float32)


def _continuous(obs: pd.DataFrame, key: str) -> np.ndarray:
    col = obs[key]
    if not pd.api.types.is_numeric_dtype(col):
        raise InvalidDataError(f"adata.obs[{key!r}] must be numeric to be a continuous covariate.")
    values = col.to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise InvalidDataError(f"adata.obs[{key!r}] has NaN or infinite values; fill or remove them.")
    return values
