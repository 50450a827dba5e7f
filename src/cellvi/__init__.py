"""cellvi: fast deep generative models for single-cell RNA-seq counts, with the scvi-tools API.

>>> import cellvi as scvi
>>> scvi.model.SCVI.setup_anndata(adata, batch_key="batch")
>>> model = scvi.model.SCVI(adata)
>>> model.train()
>>> model.get_latent_representation(adata)  # also in adata.obsm["X_scvi"]
"""

__version__ = "0.1.0"

from . import data, distributions, errors, model, module, nn, train  # noqa: E402
from ._settings import settings  # noqa: E402

__all__ = ["data", "distributions", "errors", "model", "module", "nn", "settings", "train", "__version__"]
