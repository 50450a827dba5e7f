"""Quality on real data: issue 2's acceptance check on PBMCs from three 10x chemistries."""

import scanpy as sc
from tests.conftest import real_data_path

import cellvi as scvi
from cellvi.analysis import batch_mixing_entropy, knn_label_accuracy


def test_pbmc_three_chemistries_integration():
    adata = sc.read_h5ad(real_data_path("pbmc_3chemistries.h5ad"))
    scvi.model.SCVI.setup_anndata(adata, batch_key="batch")
    model = scvi.model.SCVI(adata)
    model.train(max_epochs=200)
    latent = model.get_latent_representation(adata)
    accuracy = knn_label_accuracy(latent, adata.obs["cell_type"], k=15, n_folds=5)
    mixing = batch_mixing_entropy(latent, adata.obs["batch"], k=50)
    print(f"kNN accuracy {accuracy:.3f}, batch mixing {mixing:.3f}")
    assert accuracy >= 0.90
    assert mixing >= 0.85
    # the snippet continues with scanpy on the stored latent
    sc.pp.neighbors(adata, use_rep="X_scvi")
    sc.tl.umap(adata)
    assert adata.obsm["X_umap"].shape == (adata.n_obs, 2)
