"""Make the scvi-tools 1.4.2 model folders that cellvi's import tests load (tests/fixtures/scvi_tools/).

Run in the scvi-tools environment (not cellvi's):

    OMP_NUM_THREADS=1 bench/.venv-scvi/bin/python bench/make_scvi_fixtures.py tests/fixtures/scvi_tools

Each folder ``<name>/`` is what ``model.save(dir)`` wrote (``model.pt``); next to it ``<name>.npz`` holds
scvi-tools' own outputs on ``data.h5ad``: ``latent`` (posterior means, ``get_latent_representation()``)
and ``scale`` (normalised expression at the posterior mean of z, computed by scvi-tools' module: its
``get_normalized_expression`` samples z, which no other program can reproduce bit for bit), and for
SCANVI ``proba`` (``predict(soft=True)``). Tiny data (60 cells x 30 genes), a few epochs: the point is
the format and the arithmetic, not a good model.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp
import scvi
import torch

N_CELLS, N_GENES, EPOCHS = 60, 30, 3


def make_data(seed: int = 0) -> anndata.AnnData:
    rng = np.random.default_rng(seed)
    types = rng.integers(0, 3, N_CELLS)
    batch = rng.integers(0, 2, N_CELLS)
    means = rng.gamma(2.0, 2.0, (3, N_GENES))[types] * (1 + 0.5 * rng.random((2, N_GENES)))[batch]
    X = rng.poisson(means * rng.gamma(5.0, 0.2, (N_CELLS, 1))).astype(np.float32)
    obs = pd.DataFrame(index=[f"cell{i}" for i in range(N_CELLS)])
    obs["batch"] = pd.Categorical([f"b{i}" for i in batch])
    labels = np.array([f"type{t}" for t in types], dtype=object)
    labels[rng.random(N_CELLS) < 0.3] = "Unknown"
    obs["cell_type"] = pd.Categorical(labels)
    obs["donor"] = pd.Categorical(rng.choice(["d0", "d1", "d2"], N_CELLS))
    obs["pct_mito"] = rng.random(N_CELLS).astype(np.float32)
    var = pd.DataFrame(index=[f"gene{j}" for j in range(N_GENES)])
    return anndata.AnnData(sp.csr_matrix(X), obs=obs, var=var)


COVS = {"categorical_covariate_keys": ["donor"], "continuous_covariate_keys": ["pct_mito"]}
SCVI_CASES = {
    "scvi_zinb_gene": ({"batch_key": "batch"}, {}),
    "scvi_nb_genebatch_2layers": (
        {"batch_key": "batch"},
        {"gene_likelihood": "nb", "dispersion": "gene-batch", "n_layers": 2},
    ),
    "scvi_poisson_latentlib": ({"batch_key": "batch"}, {"gene_likelihood": "poisson", "use_observed_lib_size": False}),
    "scvi_zinb_genelabel_covs_encode": (
        {"batch_key": "batch", "labels_key": "cell_type", **COVS},
        {"dispersion": "gene-label", "encode_covariates": True, "n_layers": 2},
    ),
    "scvi_nb_covs_noinject_latentlib": (
        {"batch_key": "batch", **COVS},
        {
            "gene_likelihood": "nb",
            "deeply_inject_covariates": False,
            "n_layers": 2,
            "use_observed_lib_size": False,
            "encode_covariates": True,
        },
    ),
    "scvi_layernorm_nobatchnorm": (
        {"batch_key": "batch"},
        {"use_layer_norm": "both", "use_batch_norm": "none", "gene_likelihood": "nb"},
    ),
    "scvi_genecell_nobatch": ({}, {"dispersion": "gene-cell"}),
}


@torch.no_grad()
def outputs(model, adata) -> dict:
    """scvi-tools' latent means and scale at the posterior mean of z, (n_cells, ...) float32."""
    model.module.eval()
    latent = model.get_latent_representation(adata)
    scales = []
    for tensors in model._make_data_loader(adata=adata, batch_size=1000, shuffle=False):
        inf = model.module.inference(**model.module._get_inference_input(tensors))
        inf = {**inf, "z": model.module.z_encoder.z_transformation(inf["qz"].loc)}
        gen = model.module.generative(**model.module._get_generative_input(tensors, inf))
        scales.append(gen["px"].scale.cpu().numpy())
    return {"latent": latent.astype(np.float32), "scale": np.concatenate(scales).astype(np.float32)}


def gene_selection(out: Path) -> None:
    """scvi-tools' poisson_gene_selection on data.h5ad (2 batches, top 10 genes)."""
    adata = anndata.read_h5ad(out / "data.h5ad")
    df = scvi.data.poisson_gene_selection(adata, n_top_genes=10, inplace=False, batch_key="batch", silent=True)
    df.to_csv(out / "poisson_gene_selection.csv")


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    scvi.settings.seed = 0
    base = make_data()
    base.write_h5ad(out / "data.h5ad", compression="gzip")
    manifest = {"scvi_tools_version": scvi.__version__, "torch_version": torch.__version__, "fixtures": {}}
    scvi_models = {}
    for name, (setup, params) in SCVI_CASES.items():
        adata = base.copy()
        scvi.model.SCVI.setup_anndata(adata, **setup)
        model = scvi.model.SCVI(adata, n_hidden=16, n_latent=4, **params)
        model.train(max_epochs=EPOCHS, batch_size=32, enable_progress_bar=False)
        model.save(str(out / name), overwrite=True, save_anndata=name == "scvi_zinb_gene")
        np.savez_compressed(out / f"{name}.npz", **outputs(model, adata))
        manifest["fixtures"][name] = {"model": "SCVI", "setup": setup, "params": params}
        scvi_models[name] = (model, adata)
    model, adata = scvi_models["scvi_zinb_gene"]
    ref = base.copy()
    scvi.model.SCVI.setup_anndata(ref, batch_key="batch", labels_key="cell_type")
    vae = scvi.model.SCVI(ref, n_hidden=16, n_latent=4)
    vae.train(max_epochs=EPOCHS, batch_size=32, enable_progress_bar=False)
    lvae = scvi.model.SCANVI.from_scvi_model(vae, unlabeled_category="Unknown")
    lvae.train(max_epochs=EPOCHS, batch_size=32, enable_progress_bar=False)
    lvae.save(str(out / "scanvi_labels_unknown"), overwrite=True)
    res = outputs(lvae, ref)
    proba = lvae.predict(ref, soft=True)
    res["proba"] = proba.to_numpy().astype(np.float32)
    np.savez_compressed(out / "scanvi_labels_unknown.npz", **res)
    manifest["fixtures"]["scanvi_labels_unknown"] = {
        "model": "SCANVI",
        "setup": {"batch_key": "batch", "labels_key": "cell_type", "unlabeled_category": "Unknown"},
        "params": {},
        "classes": list(proba.columns),
    }
    gene_selection(out)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    print(json.dumps(manifest, indent=1))


if __name__ == "__main__":
    if "--genes-only" in sys.argv:  # only the gene-selection table, from the committed data.h5ad
        gene_selection(Path(sys.argv[-1]))
        sys.exit(0)
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/scvi_tools"))
