"""cellvi <-> scvi-tools model folders: export check and query-mapping time, in both environments.

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python bench/scvi_tools_interop.py   # from the repo root

Step 1 (cellvi env): cellvi trains small models (several architectures, SCVI and SCANVI) on the fixture
data, writes each with ``model.save(dir, format="scvi-tools")`` and its own latent means.
Step 2 (scvi-tools env, ``bench/.venv-scvi``, run by this script as a subprocess with ``--scvi-side``):
scvi-tools 1.4.2 loads every folder with ``scvi.model.SCVI.load`` / ``SCANVI.load`` and computes the latent
means; the largest absolute difference per model is recorded.
Step 3 (both envs): a scvi-tools reference (SCVI, simulated 2,000 cells x 400 genes, 3 batches) maps a
query batch of 500 cells with ``load_query_data`` + ``train(max_epochs=20)``: scvi-tools on its own
folder, cellvi on the same folder; wall time of load + train (median of 3), and how far the reference
cells' latent moved in cellvi.
Results: bench/results/scvi_tools_interop.{json,md}. Timings on a shared 2-core machine are noisy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "scvi_tools"
SCVI_PY = Path(os.environ.get("SCVI_PYTHON", "/work/main/bench/.venv-scvi/bin/python"))
RESULTS = REPO / "bench" / "results"
EXPORTS = {
    "scvi_zinb_gene": ("SCVI", {"batch_key": "batch"}, {}),
    "scvi_nb_2layers_layernorm": (
        "SCVI",
        {"batch_key": "batch"},
        {"gene_likelihood": "nb", "n_layers": 2, "use_layer_norm": "both", "use_batch_norm": "none"},
    ),
    "scvi_covs_encode_latentlib": (
        "SCVI",
        {"batch_key": "batch", "categorical_covariate_keys": ["donor"], "continuous_covariate_keys": ["pct_mito"]},
        {"encode_covariates": True, "use_observed_lib_size": False, "dispersion": "gene-batch"},
    ),
    "scanvi": ("SCANVI", {"batch_key": "batch", "labels_key": "cell_type", "unlabeled_category": "Unknown"}, {}),
}
QUERY_EPOCHS, N_REPEATS = 20, 3


def cellvi_export(out: Path) -> dict:
    import anndata

    import cellvi

    cellvi.settings.progress_bar = False
    cellvi.settings.seed = 0
    report = {}
    for name, (kind, setup, params) in EXPORTS.items():
        adata = anndata.read_h5ad(FIXTURES / "data.h5ad")
        cls = getattr(cellvi.model, kind)
        cls.setup_anndata(adata, **setup)
        model = cls(adata, n_hidden=16, n_latent=4, **params)
        model.train(max_epochs=5, batch_size=32)
        model.save(out / name, format="scvi-tools")
        np.save(out / f"{name}.npy", model.get_latent_representation(adata))
        report[name] = {"model": kind, "setup": setup, "params": params}
    return report


def scvi_side(out: Path) -> None:
    """Run in the scvi-tools env: load each exported folder, compare latents; time query mapping."""
    import anndata
    import scvi

    scvi.settings.seed = 0
    res = {"scvi_tools_version": scvi.__version__, "export": {}}
    for name, info in json.loads((out / "exports.json").read_text()).items():
        adata = anndata.read_h5ad(FIXTURES / "data.h5ad")
        model = getattr(scvi.model, info["model"]).load(str(out / name), adata)
        latent = model.get_latent_representation(adata)
        res["export"][name] = {"max_abs_diff": float(np.abs(latent - np.load(out / f"{name}.npy")).max())}
    res["query"] = query_scvi(out)
    (out / "scvi_side.json").write_text(json.dumps(res))


def sim_data():
    import anndata
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    n, g = 2500, 400
    types, batch = rng.integers(0, 5, n), rng.integers(0, 4, n)
    mean = rng.gamma(1.0, 1.0, (5, g))[types] * rng.gamma(20, 0.05, (4, g))[batch] * rng.gamma(10, 0.1, (n, 1))
    adata = anndata.AnnData(sp.csr_matrix(rng.poisson(mean).astype(np.float32)))
    adata.obs_names = [f"c{i}" for i in range(n)]
    adata.var_names = [f"g{j}" for j in range(g)]
    adata.obs["batch"] = pd.Categorical([f"b{b}" for b in batch])
    return adata[adata.obs["batch"] != "b3"].copy(), adata[adata.obs["batch"] == "b3"].copy()


def query_scvi(out: Path) -> dict:
    import scvi

    ref, query = sim_data()
    scvi.model.SCVI.setup_anndata(ref, batch_key="batch")
    model = scvi.model.SCVI(ref, n_hidden=64, n_latent=10, encode_covariates=True)
    model.train(max_epochs=30, enable_progress_bar=False)
    model.save(str(out / "reference"), overwrite=True)
    np.save(out / "reference_latent.npy", model.get_latent_representation(ref))
    times = []
    for _ in range(N_REPEATS):
        q = query.copy()
        t = time.perf_counter()
        qm = scvi.model.SCVI.load_query_data(q, str(out / "reference"))
        qm.train(max_epochs=QUERY_EPOCHS, enable_progress_bar=False)
        times.append(time.perf_counter() - t)
    return {"seconds": times, "n_query": int(query.n_obs), "n_ref": int(ref.n_obs)}


def query_cellvi(out: Path) -> dict:
    import cellvi

    cellvi.settings.progress_bar = False
    ref, query = sim_data()
    times, moved = [], None
    for _ in range(N_REPEATS):
        q = query.copy()
        t = time.perf_counter()
        qm = cellvi.model.SCVI.load_query_data(q, out / "reference")
        qm.train(max_epochs=QUERY_EPOCHS)
        times.append(time.perf_counter() - t)
        moved = float(
            np.abs(qm.get_latent_representation(ref, obsm_key=None) - np.load(out / "reference_latent.npy")).max()
        )
    return {"seconds": times, "reference_latent_max_abs_change": moved}


def main() -> None:
    if "--scvi-side" in sys.argv:
        scvi_side(Path(sys.argv[-1]))
        return
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        exports = cellvi_export(out)
        (out / "exports.json").write_text(json.dumps(exports))
        subprocess.run(
            [str(SCVI_PY), __file__, "--scvi-side", str(out)], check=True, env={**os.environ, "PYTHONPATH": ""}
        )
        side = json.loads((out / "scvi_side.json").read_text())
        cv = query_cellvi(out)
    sv = side["query"]
    result = {
        "scvi_tools_version": side["scvi_tools_version"],
        "export": {k: {**exports[k], **v} for k, v in side["export"].items()},
        "query_mapping": {
            "n_ref": sv["n_ref"],
            "n_query": sv["n_query"],
            "epochs": QUERY_EPOCHS,
            "scvi_tools_seconds": sv["seconds"],
            "cellvi_seconds": cv["seconds"],
            "scvi_tools_median_s": float(np.median(sv["seconds"])),
            "cellvi_median_s": float(np.median(cv["seconds"])),
            "speedup": float(np.median(sv["seconds"]) / np.median(cv["seconds"])),
            "reference_latent_max_abs_change": cv["reference_latent_max_abs_change"],
        },
        "load": os.getloadavg(),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scvi_tools_interop.json").write_text(json.dumps(result, indent=1))
    lines = [
        "# cellvi <-> scvi-tools model folders",
        "",
        f"scvi-tools {result['scvi_tools_version']}; `PYTHONPATH=src python bench/scvi_tools_interop.py`.",
        "",
        '## Export: `model.save(dir, format="scvi-tools")` loaded by scvi-tools',
        "",
        "| model | max abs latent difference (scvi-tools vs cellvi) |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v['max_abs_diff']:.2e} |" for k, v in result["export"].items()]
    q = result["query_mapping"]
    lines += [
        "",
        "## Query mapping onto a scvi-tools reference folder",
        "",
        (
            f"Reference {q['n_ref']} cells (scvi-tools SCVI, 400 genes), query {q['n_query']} cells, "
            f"load_query_data + {q['epochs']} epochs, median of {N_REPEATS}."
        ),
        "",
        "| | seconds (median) |",
        "|---|---|",
        f"| scvi-tools | {q['scvi_tools_median_s']:.2f} |",
        f"| cellvi | {q['cellvi_median_s']:.2f} |",
        "",
        (
            f"cellvi / scvi-tools speed: {q['speedup']:.2f}x. Reference latent moved by at most "
            f"{q['reference_latent_max_abs_change']:.1e} in cellvi. Load averages {result['load']} "
            "(shared machine, noisy)."
        ),
    ]
    (RESULTS / "scvi_tools_interop.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
