"""The reference value and seed spread of tests/analysis/test_integration_regression.py.

Scores the cellvi SCVI latents that bench/integration.py cached for pbmc_3chemistries (default
training, one per seed) exactly as the test does: ``benchmark_integration(..., neighbors="exact")``,
"Bio conservation". Run bench/integration.py first, then:

    .venv/bin/python bench/integration_regression.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from integration import DATA, SHARED  # noqa: E402


def main() -> None:
    import anndata as ad

    from cellvi.analysis import benchmark_integration

    name = "pbmc_3chemistries"
    file, batch_key, label_key = SHARED[name]
    adata = ad.read_h5ad(DATA / file)
    work = HERE / "data" / "integration_work" / name
    seeds = sorted(int(p.stem.split("_")[1]) for p in work.glob("cellvi_*.npz"))
    keys = []
    for s in seeds:
        adata.obsm[f"seed{s}"] = np.load(work / f"cellvi_{s}.npz")["SCVI"]
        keys.append(f"seed{s}")
    df = benchmark_integration(adata, keys, batch_key, label_key, neighbors="exact")
    bio = df["Bio conservation"].to_numpy()
    res = {"dataset": name, "seeds": seeds, "bio_conservation": bio.tolist(), "seed0": float(bio[0]),
           "mean": float(bio.mean()), "sd": float(bio.std(ddof=1)), "max_abs_dev_from_seed0": float(np.abs(bio - bio[0]).max())}
    (HERE / "results" / "integration_regression.json").write_text(json.dumps(res, indent=1))
    (HERE / "results" / "integration_regression.md").write_text(
        f"# Regression reference: cellvi SCVI bio conservation on {name}\n\n"
        f"Default training, exact kNN (as the test). Seeds {seeds}: "
        + ", ".join(f"{b:.4f}" for b in bio)
        + f"\n\nseed 0: {bio[0]:.4f}; mean {bio.mean():.4f} ± {bio.std(ddof=1):.4f} (sd); largest deviation "
        f"from seed 0: {res['max_abs_dev_from_seed0']:.4f}\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
