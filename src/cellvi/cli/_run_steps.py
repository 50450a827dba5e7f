"""The steps of ``cellvi run`` that are more than one scanpy call: the genes to train on, the
trajectory's root cell, marker genes, doublet scores, the latent's metrics, SCANVI's calibration and the
versions of the summary."""

from __future__ import annotations

import platform
import sys

import numpy as np
import pandas as pd

from ..data.matrix import sample_rows
from ._common import CliError

HVG_CELLS = 100_000
METRIC_CELLS = 20_000
N_MARKERS = 10


def select_genes(adata, args, steps) -> np.ndarray:
    """Boolean mask of the genes to train on (all genes when n_top_genes is 0 or >= n_vars)."""
    import scanpy as sc

    n_top = args.n_top_genes
    if not n_top or n_top >= adata.n_vars:
        adata.var["highly_variable"] = True
        return np.ones(adata.n_vars, bool)
    rows = sample_rows(adata.n_obs, HVG_CELLS, args.seed)
    sub = adata[rows].to_memory() if adata.isbacked else adata[rows]
    sub = sc.AnnData(sub.layers[args.layer] if args.layer else sub.X, obs=sub.obs[[]].copy(), var=sub.var[[]].copy())
    if args.batch_key:
        sub.obs["batch"] = adata.obs[args.batch_key].to_numpy()[rows]
    try:
        sc.pp.highly_variable_genes(
            sub, flavor="seurat_v3", n_top_genes=n_top, batch_key="batch" if args.batch_key else None
        )
    except ImportError as exc:
        raise CliError(f"--n-top-genes needs scikit-misc (pip install 'cellvi[analysis]'): {exc}") from exc
    mask = sub.var["highly_variable"].to_numpy()
    adata.var["highly_variable"] = mask
    adata.var["highly_variable_rank"] = sub.var["highly_variable_rank"].to_numpy()
    return mask


def root_index(adata, args) -> int | None:
    """The row of the diffusion-pseudotime root: ``--root-cell``, or the far end of ``--root-group``."""
    if args.root_cell is not None:
        if args.root_cell not in adata.obs_names:
            raise CliError(f"--root-cell {args.root_cell!r} is not a cell name (obs_names)")
        return int(adata.obs_names.get_loc(args.root_cell))
    if args.root_group is None:
        return None
    for key in ("leiden", args.labels_key):
        if key and args.root_group in set(adata.obs[key].astype(str)):
            members = np.flatnonzero(adata.obs[key].astype(str).to_numpy() == args.root_group)
            return farthest_member(adata.obsm["X_diffmap"], adata.uns["diffmap_evals"], members)
    raise CliError(f"--root-group {args.root_group!r} is neither a Leiden cluster nor a --labels-key value")


def farthest_member(diffmap: np.ndarray, evals: np.ndarray, members: np.ndarray) -> int:
    """The cell of ``members`` farthest from the other cells' centroid, in diffusion components weighted
    as DPT weighs them (lambda / (1 - lambda), the first, constant component left out): the far end of a
    root group. The extreme of the first component alone can be the group's end at a branch point."""
    k = np.arange(1, diffmap.shape[1])
    y = diffmap[:, k] * (evals[k] / (1 - evals[k]))
    others = np.ones(len(y), dtype=bool)
    others[members] = False
    centre = y[others].mean(axis=0) if others.any() else y.mean(axis=0)
    return int(members[np.argmax(((y[members] - centre) ** 2).sum(axis=1))])


def marker_table(model, tdata, args) -> pd.DataFrame:
    """The ``N_MARKERS`` up-regulated genes of each Leiden cluster (one-vs-all change-mode DE), one row
    per (cluster, rank), ordered by proba_de then lfc_mean."""
    de = model.differential_expression(tdata, groupby="leiden", mode="change", n_samples=args.de_cells)
    de = de[de["lfc_mean"] > 0]
    cols = [
        "group1",
        "proba_de",
        "bayes_factor",
        "lfc_mean",
        "scale1",
        "scale2",
        "non_zeros_proportion1",
        "non_zeros_proportion2",
    ]
    top = (
        de.rename_axis("gene")
        .reset_index()[["gene", *cols]]
        .sort_values(["group1", "proba_de", "lfc_mean"], ascending=[True, False, False], kind="stable")
        .groupby("group1", sort=False)
        .head(N_MARKERS)
        .rename(columns={"group1": "cluster"})
    )
    top["cluster"] = top["cluster"].astype(str)
    order = sorted(top["cluster"].unique(), key=lambda c: (len(c), c))
    top["cluster"] = pd.Categorical(top["cluster"], order)
    top = top.sort_values(["cluster", "proba_de"], ascending=[True, False], kind="stable")
    top["rank"] = top.groupby("cluster", observed=True).cumcount() + 1
    return top[["cluster", "rank", "gene", *cols[1:]]].reset_index(drop=True)


def doublet_scores(model, tdata, args) -> pd.DataFrame:
    """SOLO on the trained scVI model, one batch at a time (doublets form within a lane): per cell
    ``doublet_score`` = P(doublet) and ``predicted_doublet`` (P > 0.5), indexed like ``tdata``."""
    from ..external import SOLO

    batches = [None]
    if args.batch_key and tdata.obs[args.batch_key].nunique() > 1:
        batches = list(pd.unique(tdata.obs[args.batch_key].astype(str)))
    parts = []
    for batch in batches:
        solo = SOLO.from_scvi_model(model, tdata, restrict_to_batch=batch, seed=args.seed)
        solo.train(enable_progress_bar=not args.no_progress)
        parts.append(solo.predict()["doublet"])
    score = pd.concat(parts).reindex(tdata.obs_names)
    return pd.DataFrame({"doublet_score": score, "predicted_doublet": score > 0.5})


def latent_metrics(tdata, args) -> dict:
    """Batch-mixing entropy and kNN label accuracy of ``obsm["X_scvi"]`` on at most ``METRIC_CELLS``
    cells, where batches and labels are given."""
    from ..analysis import batch_mixing_entropy, knn_label_accuracy

    rows = sample_rows(tdata.n_obs, METRIC_CELLS, args.seed)
    z = tdata.obsm["X_scvi"][rows]
    out = {}
    if args.batch_key and tdata.obs[args.batch_key].nunique() > 1:
        out["batch_mixing_entropy"] = round(batch_mixing_entropy(z, tdata.obs[args.batch_key].to_numpy()[rows]), 4)
    if args.labels_key:
        labels = tdata.obs[args.labels_key].astype(str).to_numpy()[rows]
        counts = pd.Series(labels).value_counts()
        keep = np.isin(labels, counts.index[counts >= 5])  # stratified 5-fold needs 5 cells per label
        if keep.sum() > 10 and len(set(labels[keep])) > 1:
            out["knn_label_accuracy"] = round(knn_label_accuracy(z[keep], labels[keep]), 4)
    return out


def versions() -> dict:
    """Python's and the main packages' versions, for the summary."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("cellvi", "torch", "scanpy", "anndata", "numpy", "matplotlib"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def calibrate(scanvi) -> None:
    """Temperature and unknown-type detector on the held-out labelled cells, saved with the model for
    ``cellvi map-query``; with too few such cells, a notice and the model as it is."""
    from ..errors import CellviError

    try:
        scanvi.calibrate()
    except CellviError as exc:
        print(f"cellvi: SCANVI not calibrated ({exc}); map-query will give uncalibrated labels.", file=sys.stderr)
