"""Scoring batch integration with the scIB metrics (scib-metrics' ``Benchmarker``).

scib-metrics (with JAX) is an optional extra, ``pip install cellvi[integration]``; it is imported only
when :func:`benchmark_integration` is called.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..errors import InvalidDataError, InvalidParameterError, MissingDependencyError, MissingKeyError

AGGREGATES = ("Batch correction", "Bio conservation", "Total")


def _import_scib_metrics():
    try:
        from scib_metrics.benchmark import Benchmarker
    except ImportError as exc:
        raise MissingDependencyError(
            "benchmark_integration needs scib-metrics, an optional extra: pip install 'cellvi[integration]' "
            f"(import failed: {exc})."
        ) from exc
    return Benchmarker


def _column(adata, key: str, what: str) -> np.ndarray:
    if key not in adata.obs.columns:
        raise MissingKeyError(f"{what} {key!r} is not in adata.obs. Available columns: {list(adata.obs.columns)}.")
    values = adata.obs[key]
    if values.isna().any():
        raise InvalidDataError(f"adata.obs[{key!r}] has {int(values.isna().sum())} missing values (NaN).")
    return np.asarray(values.astype(str))


def _embedding(adata, key: str) -> np.ndarray:
    if key not in adata.obsm:
        raise MissingKeyError(f"Embedding {key!r} is not in adata.obsm. Available keys: {list(adata.obsm.keys())}.")
    emb = np.asarray(adata.obsm[key], dtype=np.float32)
    if emb.ndim != 2 or not np.isfinite(emb).all():
        raise InvalidDataError(f"adata.obsm[{key!r}] must be a finite 2-D array (cells x dimensions).")
    return emb


def _unintegrated_pca(adata, n_comps: int = 50) -> np.ndarray:
    """PCA of ``adata.X`` on a copy: normalised to the median total and log1p'd first when X holds
    integer counts (scIB's PCA regression wants normalised data), used as it is otherwise."""
    import anndata as ad
    import scanpy as sc
    import scipy.sparse as sp

    X = adata.X
    values = X.data if sp.issparse(X) else np.asarray(X)
    tmp = ad.AnnData(X.astype(np.float32, copy=True))
    if np.all(np.mod(values[:100_000], 1) == 0):
        sc.pp.normalize_total(tmp)
        sc.pp.log1p(tmp)
    n_comps = max(1, min(n_comps, min(tmp.shape) - 1))
    sc.pp.pca(tmp, n_comps=n_comps, svd_solver="arpack")
    return tmp.obsm["X_pca"]


def _exact_neighbors(X: np.ndarray, k: int):
    """scib-metrics' NeighborsResults of the exact k nearest neighbours (each cell first, as pynndescent)."""
    from scib_metrics.nearest_neighbors import NeighborsResults
    from sklearn.neighbors import NearestNeighbors

    distances, indices = NearestNeighbors(n_neighbors=k).fit(X).kneighbors(X)
    return NeighborsResults(indices=indices, distances=distances)


def benchmark_integration(
    adata,
    obsm_keys: Sequence[str],
    batch_key: str,
    label_key: str,
    *,
    pre_integrated_obsm_key: str | None = None,
    neighbors: str = "pynndescent",
    n_jobs: int = 1,
    progress_bar: bool = False,
    return_benchmarker: bool = False,
    kmeans_n_init: int = 1,
):
    """The scIB metrics of each embedding in ``adata.obsm[obsm_keys]``, with scib-metrics' ``Benchmarker``
    at its defaults (bio conservation: isolated labels, k-means NMI and ARI, silhouette label, cLISI;
    batch correction: BRAS, iLISI, kBET, graph connectivity, PCR comparison).

    Returns a DataFrame with one row per embedding (index: the obsm keys) and one float column per
    metric, then ``"Batch correction"`` and ``"Bio conservation"`` (the means of their metrics) and
    ``"Total"`` = 0.6 bio + 0.4 batch, all unscaled (no min-max scaling across embeddings, so a row's
    scores do not depend on the other rows). ``df.attrs["metric_type"]`` maps each column to its group.

    pre_integrated_obsm_key: the unintegrated embedding for the PCR comparison; default: a 50-component
    PCA of ``adata.X`` (normalised and log1p'd first when X holds counts), computed on a copy.
    neighbors: "pynndescent" (scib-metrics' default, approximate) or "exact" (scikit-learn's exact k
    nearest neighbours: no numba compilation, which takes ~20-100 s once per process; fine up to some
    10^4 cells). ``return_benchmarker=True`` returns ``(df, benchmarker)``, e.g. for ``plot_results_table``.
    kmeans_n_init: k-means starts behind "KMeans NMI" and "KMeans ARI" (the best of them by inertia, the
    same KMeans, k = the number of labels); scib-metrics takes 1, and one start can end in a poor local
    optimum that moves the total by 0.1 or more for the same embedding (bench/results/
    integration_kmeans_*.md). With more than 1 the bio and total columns are recomputed from them; not
    with ``return_benchmarker``, whose plot would show one start.
    Nothing of ``adata`` is changed. Needs the ``integration`` extra (scib-metrics); raises
    :class:`cellvi.errors.MissingDependencyError` without it, :class:`cellvi.errors.MissingKeyError`
    for a missing key and :class:`cellvi.errors.InvalidDataError` for fewer than two batches or labels.
    """
    import anndata as ad

    keys = [obsm_keys] if isinstance(obsm_keys, str) else list(obsm_keys)
    if not keys:
        raise InvalidParameterError("obsm_keys is empty: name at least one embedding in adata.obsm.")
    batches = _column(adata, batch_key, "batch_key")
    labels = _column(adata, label_key, "label_key")
    embeddings = {key: _embedding(adata, key) for key in keys}
    if len(np.unique(batches)) < 2:
        raise InvalidDataError(f"adata.obs[{batch_key!r}] has a single batch: there is no integration to score.")
    if len(np.unique(labels)) < 2:
        raise InvalidDataError(f"adata.obs[{label_key!r}] has a single label: bio conservation cannot be scored.")
    if int(kmeans_n_init) != kmeans_n_init or kmeans_n_init < 1:
        raise InvalidParameterError(f"kmeans_n_init must be an integer >= 1, got {kmeans_n_init!r}.")
    if kmeans_n_init > 1 and return_benchmarker:
        raise InvalidParameterError(
            "kmeans_n_init > 1 changes the table, not the Benchmarker: not with return_benchmarker."
        )
    if neighbors not in ("pynndescent", "exact"):
        raise InvalidParameterError(f"neighbors must be 'pynndescent' or 'exact', got {neighbors!r}.")
    Benchmarker = _import_scib_metrics()
    pre = _embedding(adata, pre_integrated_obsm_key) if pre_integrated_obsm_key else _unintegrated_pca(adata)

    obs = pd.DataFrame({"batch": batches, "label": labels}, index=adata.obs_names.astype(str))
    work = ad.AnnData(np.zeros((adata.n_obs, 1), dtype=np.float32), obs=obs)
    work.obsm["_unintegrated"] = pre
    names = {}
    for i, (key, emb) in enumerate(embeddings.items()):
        names[f"_emb{i}"] = key
        work.obsm[f"_emb{i}"] = emb
    bm = Benchmarker(
        work,
        batch_key="batch",
        label_key="label",
        embedding_obsm_keys=list(names),
        pre_integrated_embedding_obsm_key="_unintegrated",
        n_jobs=n_jobs,
        progress_bar=progress_bar,
    )
    bm.prepare(neighbor_computer=_exact_neighbors if neighbors == "exact" else None)
    bm.benchmark()
    raw = bm.get_results(min_max_scale=False)
    metric_type = raw.loc["Metric Type"].to_dict()
    df = raw.drop(index="Metric Type").astype(np.float64).rename(index=names)
    df.index.name = "Embedding"
    df.attrs["metric_type"] = metric_type
    if kmeans_n_init > 1:
        _rescore_kmeans(df, embeddings, labels, int(kmeans_n_init))
    if return_benchmarker:
        for internal, key in names.items():  # the plot's row names: the user's keys
            bm._results = bm._results.rename(columns={internal: key})
        bm._embedding_obsm_keys = list(names.values())
        return df, bm
    return df


def kmeans_scores(embedding: np.ndarray, labels: np.ndarray, n_init: int = 1) -> tuple[float, float, float]:
    """(NMI, ARI, inertia) of scib-metrics' KMeans (seed 0, k = the number of labels) on ``embedding``
    (n_cells, d), the best of ``n_init`` starts by inertia; with 1 start, the Benchmarker's own NMI/ARI."""
    from scib_metrics.utils import KMeans
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    km = KMeans(len(np.unique(labels)), n_init=n_init).fit(np.asarray(embedding, dtype=np.float32))
    nmi = normalized_mutual_info_score(labels, km.labels_, average_method="arithmetic")
    return float(nmi), float(adjusted_rand_score(labels, km.labels_)), float(km.inertia_)


def _rescore_kmeans(df: pd.DataFrame, embeddings: dict, labels: np.ndarray, n_init: int) -> None:
    """KMeans NMI / ARI of each embedding from the best of ``n_init`` starts, then bio and total again."""
    for key, emb in embeddings.items():
        df.loc[key, "KMeans NMI"], df.loc[key, "KMeans ARI"], _ = kmeans_scores(emb, labels, n_init)
    kinds = df.attrs["metric_type"]
    bio = [c for c, t in kinds.items() if t == "Bio conservation" and c in df.columns]
    df["Bio conservation"] = df[bio].mean(axis=1)
    df["Total"] = 0.6 * df["Bio conservation"] + 0.4 * df["Batch correction"]
