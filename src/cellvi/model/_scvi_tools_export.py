"""Write a cellvi model as scvi-tools 1.x writes one (``model.pt``, optionally ``adata.h5ad``):
``model.save(dir, format="scvi-tools")``. The weight layout is the reverse of
:func:`cellvi.model._scvi_tools_format.to_cellvi_state` (see that module)."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ModelFileError
from ._scvi_tools_format import MODEL_PT, SUPPORTED, _fc_modules, _heads


def from_cellvi_state(module: torch.nn.Module, twin: torch.nn.Module) -> dict:
    """scvi-tools' state dict for cellvi's ``module``. ``twin``: a cellvi module of the same shape with
    every optional part (latent library encoder, gene-cell and dropout heads) whose zeros fill the
    weights scvi-tools always holds but this model does not use."""
    out = {}
    for source, fill in ((twin, True), (module, False)):
        state = source.state_dict()
        for cpath, spath in _fc_modules(source).items():
            fc = source.get_submodule(cpath)
            for i, linear in enumerate(fc.linears):
                inject = fc.injections[i]
                parts, bias = [linear.weight.detach()], linear.bias.detach().clone()
                if inject.continuous is not None:
                    if i == 0:
                        parts.append(inject.continuous.weight.detach())
                    elif bool(inject.continuous.weight.detach().abs().max() > 0) and not fill:
                        raise ModelFileError(
                            f"{cpath} gives continuous covariates to layer {i}; scvi-tools gives them to the first "
                            "layer only, so this model cannot be written in its format (train with n_layers=1 or "
                            "deeply_inject_covariates=False to export)."
                        )
                for table in inject.tables:
                    if table.shape[0] > 1:
                        parts.append(table.detach().t())
                    else:  # scvi-tools drops a one-category covariate: its row is a constant, a bias
                        bias += table.detach()[0]
                out[f"{spath}.fc_layers.Layer {i}.0.weight"] = torch.cat(parts, dim=1)
                out[f"{spath}.fc_layers.Layer {i}.0.bias"] = bias
                prefix = f"{cpath}.post.{i}.0."
                for key, value in state.items():
                    if key.startswith(prefix):
                        out[f"{spath}.fc_layers.Layer {i}.1.{key[len(prefix) :]}"] = value.detach().clone()
        for cpath, spath in _heads(source).items():
            out[f"{spath}.weight"] = state[f"{cpath}.weight"].detach().clone()
            out[f"{spath}.bias"] = state[f"{cpath}.bias"].detach().clone()
    if getattr(module, "px_r", None) is not None:
        px_r = module.px_r.detach()
        out["px_r"] = px_r.reshape(-1).clone() if module.dispersion == "gene" else px_r.t().contiguous()
    else:
        out.pop("px_r", None)
    if hasattr(module, "library_log_means"):
        out["library_log_means"] = module.library_log_means.detach().reshape(1, -1).clone()
        out["library_log_vars"] = module.library_log_vars.detach().reshape(1, -1).clone()
    if hasattr(module, "log_y_prior"):
        out["y_prior"] = torch.exp(module.log_y_prior.detach()).reshape(1, -1)
    return {k: (v if k.endswith("num_batches_tracked") else v.float()).cpu().contiguous() for k, v in out.items()}


def _field(attr_key: str, mapping, original_key: str, summary: dict, **extra) -> dict:
    return {
        "data_registry": {"attr_name": "obs", "attr_key": attr_key},
        "state_registry": {"categorical_mapping": mapping, "original_key": original_key, **extra},
        "summary_stats": summary,
    }


def _scvi_tools_registry(model) -> dict:
    import uuid

    reg, name = model.registry, type(model).__name__
    args = reg.setup_args
    cat_keys, cont_keys = list(args["categorical_covariate_keys"]), list(args["continuous_covariate_keys"])
    if args.get("size_factor_key") is not None:
        raise ModelFileError(
            "A model set up with size_factor_key cannot be written for scvi-tools (it decodes "
            "with a softplus scale there)."
        )

    def mapping(field: str, key):
        return np.array(reg.categories[field], dtype=object) if key is not None else np.array([0])

    labels_extra = {"unlabeled_category": args["unlabeled_category"]} if name == "SCANVI" else {}
    fields = {
        "X": {
            "data_registry": {"attr_name": "X" if args["layer"] is None else "layers", "attr_key": args["layer"]},
            "state_registry": {
                "n_obs": int(model.adata.n_obs),
                "n_vars": len(reg.var_names),
                "column_names": np.array(reg.var_names, dtype=object),
            },
            "summary_stats": {"n_vars": len(reg.var_names), "n_cells": int(model.adata.n_obs)},
        },
        "batch": _field(
            "_scvi_batch",
            mapping("batch", args["batch_key"]),
            args["batch_key"] or "_scvi_batch",
            {"n_batch": len(reg.categories["batch"])},
        ),
        "labels": _field(
            "_scvi_labels",
            mapping("labels", args["labels_key"]),
            args["labels_key"] or "_scvi_labels",
            {"n_labels": len(reg.categories["labels"])},
            **labels_extra,
        ),
        "size_factor": {"data_registry": {}, "state_registry": {}, "summary_stats": {}},
        "extra_categorical_covs": {
            "data_registry": {},
            "state_registry": {},
            "summary_stats": {"n_extra_categorical_covs": 0},
        },
        "extra_continuous_covs": {
            "data_registry": {},
            "state_registry": {},
            "summary_stats": {"n_extra_continuous_covs": 0},
        },
    }
    if cat_keys:
        fields["extra_categorical_covs"] = {
            "data_registry": {"attr_name": "obsm", "attr_key": "_scvi_extra_categorical_covs"},
            "state_registry": {
                "mappings": {k: np.array(reg.categories[k], dtype=object) for k in cat_keys},
                "field_keys": cat_keys,
                "n_cats_per_key": [len(reg.categories[k]) for k in cat_keys],
            },
            "summary_stats": {"n_extra_categorical_covs": len(cat_keys)},
        }
    if cont_keys:
        fields["extra_continuous_covs"] = {
            "data_registry": {"attr_name": "obsm", "attr_key": "_scvi_extra_continuous_covs"},
            "state_registry": {"columns": np.array(cont_keys, dtype=object)},
            "summary_stats": {"n_extra_continuous_covs": len(cont_keys)},
        }
    setup = {
        "layer": args["layer"],
        "batch_key": args["batch_key"],
        "labels_key": args["labels_key"],
        "size_factor_key": None,
        "categorical_covariate_keys": cat_keys or None,
        "continuous_covariate_keys": cont_keys or None,
    }
    if name == "SCANVI":
        setup = {
            "labels_key": args["labels_key"],
            "unlabeled_category": args["unlabeled_category"],
            **setup,
            "use_minified": False,
        }
        setup.pop("labels_key")
        setup = {"labels_key": args["labels_key"], **setup}
    return {
        "scvi_version": "1.4.2",
        "model_name": name,
        "setup_args": setup,
        "setup_method_name": "setup_anndata",
        "field_registries": fields,
        "_scvi_uuid": str(uuid.uuid4()),
    }


def _scvi_tools_init_params(model) -> dict:
    p = {
        "dropout_rate": 0.1,
        "dispersion": "gene",
        "gene_likelihood": "zinb",
        "use_observed_lib_size": True,
        "latent_distribution": "normal",
        "encode_covariates": False,
        "deeply_inject_covariates": True,
        **model.init_params,
    }
    norms = {
        k: ("both" if v else "none") if isinstance(v, bool) else v
        for k, v in (
            ("use_batch_norm", p.pop("use_batch_norm", "both")),
            ("use_layer_norm", p.pop("use_layer_norm", "none")),
        )
    }
    common = [
        "n_hidden",
        "n_latent",
        "n_layers",
        "dropout_rate",
        "dispersion",
        "gene_likelihood",
        "use_observed_lib_size",
    ]
    non_kwargs = {k: p[k] for k in common}
    kwargs = {
        "encode_covariates": p["encode_covariates"],
        "deeply_inject_covariates": p["deeply_inject_covariates"],
        **norms,
    }
    if type(model).__name__ == "SCVI":
        non_kwargs["latent_distribution"] = p["latent_distribution"]
        return {"kwargs": {"kwargs": kwargs}, "non_kwargs": non_kwargs}
    if p.get("y_prior") is not None:
        kwargs["y_prior"] = torch.tensor([p["y_prior"]], dtype=torch.float32)
    cls_params = dict(p.get("classifier_parameters") or {})
    if cls_params:
        kwargs["classifier_parameters"] = cls_params
    non_kwargs.update(linear_classifier=bool(p.get("linear_classifier", False)), datamodule=None)
    return {"kwargs": {"model_kwargs": {"latent_distribution": "normal", **kwargs}}, "non_kwargs": non_kwargs}


def save_model(model, dir_path, overwrite: bool = False, save_anndata: bool = False) -> None:
    """Write ``model`` as scvi-tools 1.x writes one: ``model.pt`` (and ``adata.h5ad`` with
    ``save_anndata``), loadable by ``scvi.model.SCVI.load`` / ``SCANVI.load``."""
    from ..module import SCANVAE, VAE
    from . import _files

    name = type(model).__name__
    if name not in SUPPORTED:
        raise ModelFileError(f"Only SCVI and SCANVI models can be written in the scvi-tools format, not {name}.")
    module = model.module
    if model.minified_data_type is not None:
        raise ModelFileError(
            "A model with a minified AnnData cannot be written for scvi-tools; save it before minifying."
        )
    if name == "SCANVI" and module.dispersion == "gene-label":
        raise ModelFileError("A SCANVI with dispersion='gene-label' cannot be written for scvi-tools.")
    s = model.registry.summary
    twin_kwargs = {
        k: v
        for k, v in model.init_params.items()
        if k not in ("dispersion", "gene_likelihood", "use_observed_lib_size")
    }
    twin_args = dict(
        n_input=s["n_vars"],
        n_batch=s["n_batch"],
        n_continuous_cov=s["n_continuous"],
        n_cats_per_cov=s["n_cats_per_cov"],
        dispersion="gene-cell",
        gene_likelihood="zinb",
        use_observed_lib_size=False,
        **twin_kwargs,
    )
    with torch.random.fork_rng():
        if name == "SCANVI":
            twin = SCANVAE(n_labels=len(model.registry.categories["labels"]) - 1, **twin_args)
        else:
            twin = VAE(n_labels=s["n_labels"], **twin_args)
    for p in twin.parameters():
        p.data.zero_()
    state = from_cellvi_state(module, twin)
    state.pop("library_log_means", None) if not hasattr(module, "library_log_means") else None
    state.pop("library_log_vars", None) if not hasattr(module, "library_log_means") else None
    attrs = {
        "registry_": _scvi_tools_registry(model),
        "init_params_": _scvi_tools_init_params(model),
        "is_trained_": bool(model.is_trained),
        "train_indices_": np.asarray(model.train_indices),
        "validation_indices_": np.asarray(model.validation_indices),
        "test_indices_": np.asarray(model.test_indices),
    }
    if name == "SCANVI":
        attrs["unlabeled_category_"] = model.registry.setup_args["unlabeled_category"]
    if len(model.history):
        attrs["history_"] = {k: v.astype("float64") for k, v in model.history_.items()}
    saved = {
        "model_state_dict": state,
        "var_names": np.array(model.registry.var_names, dtype=object),
        "attr_dict": attrs,
    }
    with _files.staged_folder(dir_path, overwrite) as tmp:
        torch.save(saved, tmp / MODEL_PT)
        if save_anndata:
            model.adata.write_h5ad(tmp / "adata.h5ad")
