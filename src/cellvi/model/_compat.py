"""Parts of the scvi-tools API that every cellvi model shares and that are not about training or outputs:
the history in scvi-tools' shape, minified AnnData, training logs (see docs/switching.md)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


class ScviToolsCompat:
    """Mixed into :class:`~cellvi.model.base.BaseModel`."""

    @property
    def minified_data_type(self) -> str | None:
        """``"latent_posterior_parameters"`` after :meth:`minify_adata`, else None."""
        return self.registry.setup_args.get("minified_data_type")

    def minify_adata(
        self,
        minified_data_type: str = "latent_posterior_parameters",
        use_latent_qzm_key: str = "X_latent_qzm",
        use_latent_qzv_key: str = "X_latent_qzv",
    ) -> None:
        """Replace ``model.adata`` by a minified copy: no counts, the latent posterior's mean and variance
        in ``obsm[use_latent_qzm_key]`` / ``obsm[use_latent_qzv_key]`` and ``obs["observed_lib_size"]``.
        Latents, normalised expression and predictions keep working (from the saved posterior); training
        and likelihoods refuse. The AnnData passed before is not changed. See :mod:`cellvi.model._minify`."""
        from ._minify import minify

        minify(self, minified_data_type, use_latent_qzm_key, use_latent_qzv_key)

    def view_anndata_setup(self, adata=None, hide_state_registries: bool = False) -> None:
        """Print how the data were set up (scvi-tools' ``model.view_anndata_setup()``): the arguments of
        ``setup_anndata``, cells x genes and the code of each batch, label and covariate category. With
        ``adata``: that AnnData's own setup (it must have been set up), else the model's.
        ``hide_state_registries`` is accepted for scvi-tools' call (there is one summary to show)."""
        from ..data.registry import Registry

        print(self.registry.describe() if adata is None else Registry.of(adata).describe())

    @property
    def history_(self) -> dict[str, pd.DataFrame]:
        """The training history in scvi-tools' shape: {name: one-column DataFrame indexed by epoch},
        with its names (``train_loss``, ``elbo_train`` = the negative ELBO, ``reconstruction_loss_train``,
        ``kl_local_train``, ``kl_global_train`` (0: cellvi has no global latent), the ``_validation``
        ones, and SCANVI's ``train_classification_loss`` / ``train_accuracy``). ``model.history`` holds
        the same values (and cellvi's extras: ``kl_weight``, ``epoch_end_s``) as one DataFrame."""
        hist = self.history
        if not len(hist):
            return {}
        cols = {("train_loss" if c == "loss_train" else c): hist[c] for c in hist.columns}
        if "elbo_train" in hist.columns:
            cols.setdefault("kl_global_train", pd.Series(0.0, index=hist.index))
        return {name: values.to_frame(name) for name, values in cols.items()}


def write_log(model, logging_dir) -> None:
    """The run's history as ``<settings.logging_dir>/<Model>_<UTC time>/history.csv``."""
    from datetime import datetime, timezone

    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d_%H-%M-%S-%f")
    folder = Path(logging_dir) / f"{type(model).__name__}_{stamp}"
    folder.mkdir(parents=True, exist_ok=True)
    model.history.to_csv(folder / "history.csv")
