"""One side of bench/grn_celloracle.py, run in its own process: CellOracle itself (``--lib celloracle``,
in bench/.venv-grn) or cellvi.grn (``--lib cellvi``, in cellvi's environment), on the same files:

    DIR/counts.npz (cells x genes CSR counts), DIR/obs.csv (``branch``, ``pseudotime``), DIR/genes.txt,
    DIR/tfs.txt, DIR/embedding.npy (cells x 2)

Each follows its own documented workflow at its defaults (CellOracle's tutorial: log-normalised counts,
PCA, kNN imputation with k = 2.5% of the cells, ``get_links(alpha=10)``, ``filter_links(p=0.001,
threshold_number=2000)``, ``fit_GRN_for_simulation``, ``simulate_shift(n_propagation=3)``,
``estimate_transition_prob(n_neighbors=200, sampled_fraction=1)``, ``calculate_embedding_shift``).
Peak RSS of a step is sampled every 5 ms from /proc/self/status, relative to the RSS when the step
starts. Writes DIR/<lib>.json (timings, memory) and DIR/<lib>_links.csv, DIR/<lib>_shift.npy.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from worker import peak_rss_mib  # bench/ is on the path when run as a script


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Step:
    """Time a step and sample its peak RSS above the RSS at its start."""

    def __init__(self, record: dict, name: str) -> None:
        self.record, self.name = record, name

    def __enter__(self):
        self.start_rss, self.peak, self.stop = rss_mib(), rss_mib(), False
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        self.t0 = time.perf_counter()
        return self

    def _sample(self) -> None:
        while not self.stop:
            self.peak = max(self.peak, rss_mib())
            time.sleep(0.005)

    def __exit__(self, *exc) -> None:
        seconds = time.perf_counter() - self.t0
        self.stop = True
        self.thread.join()
        self.peak = max(self.peak, rss_mib())
        self.record[self.name] = {"s": seconds, "peak_above_start_mib": self.peak - self.start_rss}


def load(d: Path):
    counts = sp.load_npz(d / "counts.npz").tocsr().astype(np.float32)
    obs = pd.read_csv(d / "obs.csv", index_col=0)
    obs["branch"] = obs["branch"].astype("category")
    genes = (d / "genes.txt").read_text().split()
    tfs = (d / "tfs.txt").read_text().split()
    return counts, obs, genes, tfs, np.load(d / "embedding.npy")


def run_celloracle(d: Path, tf: str, steps: dict) -> tuple[pd.DataFrame, np.ndarray, str]:
    import anndata
    import celloracle as co

    counts, obs, genes, tfs, emb = load(d)
    adata = anndata.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=genes))
    adata.obsm["X_emb"] = emb
    oracle = co.Oracle()
    with Step(steps, "prepare"):
        oracle.import_anndata_as_raw_count(adata=adata, cluster_column_name="branch", embedding_name="X_emb")
        oracle.import_TF_data(TFdict={g: [t for t in tfs if t != g] for g in genes})
        oracle.perform_PCA()
        elbow = np.where(np.diff(np.diff(np.cumsum(oracle.pca.explained_variance_ratio_)) > 0.002))[0]
        n_comps = int(min(50, elbow[0])) if len(elbow) else 50  # the tutorial's rule
        k = int(0.025 * adata.n_obs)
        oracle.knn_imputation(n_pca_dims=n_comps, k=k, balanced=True, b_sight=k * 8, b_maxl=k * 4, n_jobs=1)
    with Step(steps, "fit_grn"):
        links = oracle.get_links(cluster_name_for_GRN_unit="branch", alpha=10, verbose_level=0, n_jobs=1)
    with Step(steps, "filter_and_fit_for_simulation"):
        links.filter_links(p=0.001, weight="coef_abs", threshold_number=2000)
        oracle.get_cluster_specific_TFdict_from_Links(links_object=links)
        oracle.fit_GRN_for_simulation(alpha=10, use_cluster_specific_TFdict=True, verbose_level=0)
    with Step(steps, "propagate"):
        oracle.simulate_shift(perturb_condition={tf: 0.0}, n_propagation=3)
    with Step(steps, "transitions"):
        oracle.estimate_transition_prob(n_neighbors=200, knn_random=True, sampled_fraction=1, n_jobs=1)
        oracle.calculate_embedding_shift(sigma_corr=0.05)
    table = pd.concat(
        [df.assign(cluster=cl) for cl, df in links.links_dict.items()], ignore_index=True
    )  # every fitted edge, before filtering
    return table[["cluster", "source", "target", "coef_mean", "coef_abs", "p"]], oracle.delta_embedding, co.__version__


def run_cellvi(d: Path, tf: str, steps: dict) -> tuple[pd.DataFrame, np.ndarray, str]:
    import anndata

    import cellvi
    from cellvi import grn

    counts, obs, genes, tfs, emb = load(d)
    adata = anndata.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=genes))
    adata.obsm["X_emb"] = emb
    with Step(steps, "prepare"):
        oracle = grn.Oracle(adata, "branch", "X_emb", tfs=tfs, pseudotime_key="pseudotime")
    with Step(steps, "fit_grn"):
        oracle.fit_grn(p=0.001, top_k=2000)
    with Step(steps, "perturbation"):  # propagation, transitions and grid are one call here
        res = oracle.simulate_shift({tf: 0.0}, n_propagation=3)
    steps["perturbation"]["parts_s"] = res.timings
    table = pd.concat([df.assign(cluster=cl) for cl, df in oracle.links_all.items()], ignore_index=True)
    return table[["cluster", "source", "target", "coef_mean", "coef_abs", "p"]], res.shift, cellvi.__version__


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lib", choices=["celloracle", "cellvi"], required=True)
    p.add_argument("--dir", required=True)
    p.add_argument("--tf", required=True, help="the TF knocked out")
    a = p.parse_args()
    d = Path(a.dir)
    steps: dict = {}
    t0 = time.perf_counter()
    start_rss = rss_mib()
    run = run_celloracle if a.lib == "celloracle" else run_cellvi
    links, shift, version = run(d, a.tf, steps)
    links.to_csv(d / f"{a.lib}_links.csv", index=False)
    np.save(d / f"{a.lib}_shift.npy", np.asarray(shift, dtype=np.float64))

    out = {
        "lib": a.lib,
        "version": version,
        "steps": steps,
        "total_s": time.perf_counter() - t0,
        "rss_at_start_mib": start_rss,
        "peak_rss_mib": peak_rss_mib(),
    }
    (d / f"{a.lib}.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
