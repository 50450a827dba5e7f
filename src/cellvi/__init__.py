"""cellvi: fast deep generative models for single-cell RNA-seq counts, with the scvi-tools API.

>>> import cellvi as scvi
>>> scvi.model.SCVI.setup_anndata(adata, batch_key="batch")
>>> model = scvi.model.SCVI(adata)
>>> model.train()
>>> model.get_latent_representation(adata)  # also in adata.obsm["X_scvi"]
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

try:
    __version__ = _version("cellvi")  # the installed distribution's version (pyproject.toml)
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

from . import data, distributions, errors, external, model, module, nn, train  # noqa: E402
from ._settings import settings  # noqa: E402

__all__ = ["data", "distributions", "errors", "external", "model", "module", "nn", "settings", "train", "__version__"]
