"""Write a simulated count matrix (.h5ad) for the cellvi vs scvi-tools benchmark.

By default the data come from ``cellvi.data.simulate`` so both libraries are timed on
the project's own simulator. ``--numpy`` (or an environment without cellvi, such as
bench/.venv-scvi) uses a small stand-alone negative-binomial generator instead:
cell types with log-normal gene profiles, a multiplicative batch effect per gene,
log-normal library sizes, and NB noise (about 88% zeros at the default sizes).

    python bench/make_data.py --n-cells 20000 --n-genes 2000 --out bench/data/sim_20k.h5ad
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def simulate_numpy(n_cells, n_genes, n_batches, n_cell_types, seed=0, theta=2.0):
    """Return an AnnData of NB counts with obs["batch"] and obs["cell_type"] (categorical)."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    base = rng.normal(-1.5, 1.5, size=n_genes)  # log mean per gene, heavy tailed
    type_shift = rng.normal(0.0, 0.8, size=(n_cell_types, n_genes)) * (rng.random(n_genes) < 0.3)
    batch_shift = rng.normal(0.0, 0.3, size=(n_batches, n_genes))
    cell_type = rng.integers(n_cell_types, size=n_cells)
    batch = rng.integers(n_batches, size=n_cells)
    log_mu = base + type_shift[cell_type] + batch_shift[batch]
    rate = np.exp(log_mu)
    rate /= rate.sum(axis=1, keepdims=True)
    library = rng.lognormal(np.log(350.0), 0.4, size=(n_cells, 1))
    mu = rate * library
    # NB(mean mu, inverse dispersion theta) as a gamma-Poisson mixture
    counts = rng.poisson(rng.gamma(theta, mu / theta)).astype(np.float32)
    obs = pd.DataFrame(
        {
            "batch": pd.Categorical([f"batch{b}" for b in batch], [f"batch{b}" for b in range(n_batches)]),
            "cell_type": pd.Categorical([f"type{t}" for t in cell_type], [f"type{t}" for t in range(n_cell_types)]),
        },
        index=[f"cell{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame(index=[f"gene{g}" for g in range(n_genes)])
    return ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=var)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-cells", type=int, default=20_000)
    p.add_argument("--n-genes", type=int, default=2_000)
    p.add_argument("--n-batches", type=int, default=3)
    p.add_argument("--n-cell-types", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--numpy", action="store_true", help="use the stand-alone numpy generator")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)

    t = time.perf_counter()
    sizes = dict(n_cells=a.n_cells, n_genes=a.n_genes, n_batches=a.n_batches, n_cell_types=a.n_cell_types)
    try:
        if a.numpy:
            raise ImportError
        from cellvi.data import simulate

        adata, source = simulate(**sizes, seed=a.seed), "cellvi.data.simulate"
    except ImportError:
        adata, source = simulate_numpy(**sizes, seed=a.seed), "numpy"
    adata.write_h5ad(a.out)
    x = adata.X
    nnz = x.nnz if hasattr(x, "nnz") else int(np.count_nonzero(x))
    zeros = 1.0 - nnz / (adata.n_obs * adata.n_vars)
    print(f"{source}: {adata.n_obs} x {adata.n_vars}, {zeros:.1%} zeros -> {a.out} ({time.perf_counter() - t:.1f} s)")


if __name__ == "__main__":
    main()
