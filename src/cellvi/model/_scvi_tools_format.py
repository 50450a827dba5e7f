"""Model folders saved by scvi-tools 1.x (``model.pt``, optionally ``adata.h5ad``): read and write.

Reading (:func:`read_folder`) goes through :mod:`._safe_torch_file`, which never executes anything from
the file. The saved setup arguments and category mappings become a cellvi :class:`Registry` (the
category *order* is scvi-tools', so the codes and one-hot columns line up), the saved init parameters
cellvi's, and the weights are moved onto cellvi's modules (:func:`to_cellvi_state`). What cellvi cannot
represent is refused up front, naming it; nothing is loaded half-way.

Weight layout. scvi-tools' ``FCLayers`` concatenates ``[input, continuous covariates (first layer
only), one-hot of each categorical covariate with more than one category]`` in front of each linear
map; cellvi keeps the input's weight and adds one table row per category (:mod:`cellvi.nn.layers`). A
category count of one has no column in scvi-tools and a zero row in cellvi; continuous covariates
have zero weights in cellvi's deeper layers. Writing is the reverse (:mod:`._scvi_tools_export`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..data import Registry
from ..errors import ModelFileError
from . import _safe_torch_file

MODEL_PT = "model.pt"
SUPPORTED = ("SCVI", "SCANVI")
# scvi-tools init arguments cellvi takes as they are, and the values of others it can represent
_PASSED = (
    "n_hidden",
    "n_latent",
    "n_layers",
    "dropout_rate",
    "dispersion",
    "gene_likelihood",
    "latent_distribution",
    "use_observed_lib_size",
    "encode_covariates",
    "deeply_inject_covariates",
    "use_batch_norm",
    "use_layer_norm",
    "linear_classifier",
    "classifier_parameters",
)
_DEFAULTS_ONLY = {
    "log_variational": True,
    "batch_representation": "one-hot",
    "var_activation": None,
    "extra_encoder_kwargs": None,
    "extra_decoder_kwargs": None,
    "batch_embedding_kwargs": None,
    "use_labels_groups": False,
    "labels_groups": None,
    "extra_payload_autotune": False,
    "datamodule": None,
    "y_prior": None,
}


def is_scvi_tools_folder(dir_path) -> bool:
    folder = Path(dir_path)
    return (folder / MODEL_PT).is_file() and not (folder / "model.json").is_file()


def read_folder(dir_path, cls_name: str | None) -> dict:
    """Read ``model.pt`` of a scvi-tools folder for the cellvi class ``cls_name`` (None: either). Returns ``registry``
    (a :class:`Registry`), ``init_params`` (cellvi's), ``state`` (scvi-tools' state dict) and
    ``history`` (a dict of float arrays, or {})."""
    path = Path(dir_path) / MODEL_PT
    saved = _safe_torch_file.load(path)
    if not isinstance(saved, dict) or not {"model_state_dict", "attr_dict", "var_names"} <= set(saved):
        raise ModelFileError(f"{path} is not a scvi-tools model file (model_state_dict/attr_dict/var_names missing).")
    attrs, state = saved["attr_dict"], dict(saved["model_state_dict"])
    state.pop("pyro_param_store", None)
    reg = attrs.get("registry_") if isinstance(attrs, dict) else None
    if not isinstance(reg, dict) or "setup_args" not in reg or "field_registries" not in reg:
        raise ModelFileError(f"{path} has no saved setup (registry_): it cannot be rebuilt.")
    name = reg.get("model_name")
    if name not in SUPPORTED:
        raise ModelFileError(
            f"{dir_path} holds a scvi-tools {name} model; cellvi loads scvi-tools SCVI and SCANVI models only."
        )
    if cls_name is not None and name != cls_name:
        raise ModelFileError(f"{dir_path} holds a scvi-tools {name} model; load it with cellvi.model.{name}.")
    if reg.get("setup_method_name", "setup_anndata") != "setup_anndata":
        raise ModelFileError(f"{dir_path} was set up with {reg['setup_method_name']}; cellvi supports setup_anndata.")
    params = _init_params(attrs.get("init_params_"), name, dir_path)
    registry = _registry(reg, saved["var_names"], state, name, dir_path)
    history = {}
    for key, frame in (attrs.get("history_") or {}).items():
        columns = _safe_torch_file.opaque_frame_columns(frame)
        if columns and key in columns:
            history[str(key)] = columns[key]
    return {
        "registry": registry,
        "init_params": params,
        "state": state,
        "history": history,
        "is_trained": bool(attrs.get("is_trained_", True)),
    }


def _init_params(saved, name: str, dir_path) -> dict:
    if not isinstance(saved, dict):
        raise ModelFileError(f"{dir_path}: no init_params_ saved; cannot rebuild the model.")
    flat = dict(saved.get("non_kwargs", {}))
    for group in saved.get("kwargs", {}).values():
        flat.update(group or {})
    flat.pop("unlabeled_category", None)
    flat.pop("pretrained_model", None)
    unsupported = {k: v for k, v in flat.items() if k in _DEFAULTS_ONLY and v != _DEFAULTS_ONLY[k]}
    unknown = sorted(k for k in flat if k not in _PASSED and k not in _DEFAULTS_ONLY)
    if unsupported or unknown:
        what = [f"{k}={v!r}" for k, v in unsupported.items()] + [f"{k} (unknown to cellvi)" for k in unknown]
        raise ModelFileError(f"{dir_path}: cellvi cannot represent this scvi-tools model: {', '.join(what)}.")
    params = {k: flat[k] for k in _PASSED if k in flat}
    params.setdefault("use_batch_norm", "both")
    params.setdefault("use_layer_norm", "none")
    if params.get("gene_likelihood") not in (None, "zinb", "nb", "poisson"):
        raise ModelFileError(f"{dir_path}: gene_likelihood={params['gene_likelihood']!r} is not supported by cellvi.")
    if name == "SCVI":
        params.pop("linear_classifier", None)
        params.pop("classifier_parameters", None)
    else:
        if params.pop("latent_distribution", "normal") != "normal":
            raise ModelFileError(f"{dir_path}: SCANVI with a non-normal latent is not supported by cellvi.")
        if params.get("dispersion") == "gene-label":
            raise ModelFileError(
                f"{dir_path}: SCANVI with dispersion='gene-label' is not supported (scvi-tools has no dispersion "
                "row for unlabelled cells)."
            )
        cls_params = dict(params.get("classifier_parameters") or {})
        if cls_params.pop("logits", True) is not True:
            raise ModelFileError(f"{dir_path}: classifier_parameters logits=False is not supported.")
        params["classifier_parameters"] = cls_params or None
    return params


def _mapping(field: dict) -> list[str]:
    return [str(c) for c in field["state_registry"]["categorical_mapping"]]


def _registry(reg: dict, var_names, state: dict, name: str, dir_path) -> Registry:
    fields, args = reg["field_registries"], dict(reg["setup_args"])
    if args.get("size_factor_key") is not None:
        raise ModelFileError(
            f"{dir_path} was set up with size_factor_key: scvi-tools then decodes with a softplus scale, "
            "which cellvi does not implement."
        )
    if args.pop("use_minified", False):
        raise ModelFileError(f"{dir_path} is a minified scvi-tools model; cellvi loads full models only.")
    cat_keys = list(args.get("categorical_covariate_keys") or [])
    cont_keys = list(args.get("continuous_covariate_keys") or [])
    categories = {"batch": _mapping(fields["batch"]), "labels": _mapping(fields["labels"])}
    if args.get("batch_key") is None:
        categories["batch"] = ["0"]
    if args.get("labels_key") is None:
        categories["labels"] = ["0"]
    if cat_keys:
        mappings = fields["extra_categorical_covs"]["state_registry"]["mappings"]
        for key in cat_keys:
            categories[key] = [str(c) for c in mappings[key]]
    if cont_keys:
        saved_cont = [str(c) for c in fields["extra_continuous_covs"]["state_registry"]["columns"]]
        if saved_cont != cont_keys:
            raise ModelFileError(
                f"{dir_path}: continuous covariate columns {saved_cont} differ from setup {cont_keys}."
            )
    n_batch = len(categories["batch"])
    if "library_log_means" in state:
        means = state["library_log_means"].reshape(-1).double().tolist()
        lvars = state["library_log_vars"].reshape(-1).double().tolist()
    else:
        means, lvars = [0.0] * n_batch, [1.0] * n_batch
    setup = {
        "layer": args.get("layer"),
        "batch_key": args.get("batch_key"),
        "labels_key": args.get("labels_key"),
        "size_factor_key": None,
        "categorical_covariate_keys": cat_keys,
        "continuous_covariate_keys": cont_keys,
    }
    n_labels = len(categories["labels"])
    if name == "SCANVI":
        unlabeled = str(args.get("unlabeled_category"))
        if categories["labels"][-1] != unlabeled:  # scvi-tools puts it last; cellvi's classes are the rest
            raise ModelFileError(f"{dir_path}: the unlabeled category {unlabeled!r} is not the last label.")
        setup["unlabeled_category"] = unlabeled
        n_labels -= 1
    summary = {
        "n_cells": int(fields["X"]["summary_stats"].get("n_cells", 0)),
        "n_vars": len(var_names),
        "n_batch": n_batch,
        "n_labels": n_labels,
        "n_cats_per_cov": [len(categories[k]) for k in cat_keys],
        "n_continuous": len(cont_keys),
        "n_empty_cells": 0,
        "library_log_means": means,
        "library_log_vars": lvars,
    }
    return Registry(setup, [str(v) for v in var_names], categories, cont_keys, summary, name)


# ---------------------------------------------------------------------- weights
def _fc_pairs(cv_prefix: str, sv_prefix: str, n_layers: int) -> list[tuple[str, str]]:
    return [(f"{cv_prefix}.linears.{i}", f"{sv_prefix}.fc_layers.Layer {i}.0") for i in range(n_layers)]


def _layer_blocks(fc: torch.nn.Module, i: int, w_in: int, first: bool) -> list[tuple[str, int]]:
    """Column blocks of scvi-tools' layer ``i`` weight after the input: (cellvi name, width), in order."""
    inject = fc.injections[i]
    blocks = []
    if first and inject.continuous is not None:
        blocks.append(("continuous", inject.continuous.weight.shape[1]))
    for j, table in enumerate(inject.tables):
        if table.shape[0] > 1:
            blocks.append((f"tables.{j}", table.shape[0]))
    return blocks


def _fc_modules(module: torch.nn.Module) -> dict[str, str]:
    """cellvi FCLayers paths -> scvi-tools FCLayers paths of ``module``."""
    pairs = {
        "z_encoder.encoder": "z_encoder.encoder",
        "l_encoder.encoder": "l_encoder.encoder",
        "decoder.decoder": "decoder.px_decoder",
        "encoder_z2_z1.encoder": "encoder_z2_z1.encoder",
        "decoder_z1_z2.encoder": "decoder_z1_z2.decoder",
        "classifier.hidden": "classifier.classifier.0",
    }
    names = dict(module.named_modules())
    return {c: s for c, s in pairs.items() if names.get(c) is not None}


def _heads(module) -> dict[str, str]:
    heads = {
        "z_encoder.mean": "z_encoder.mean_encoder",
        "z_encoder.log_var": "z_encoder.var_encoder",
        "l_encoder.mean": "l_encoder.mean_encoder",
        "l_encoder.log_var": "l_encoder.var_encoder",
        "decoder.scale_head": "decoder.px_scale_decoder.0",
        "decoder.r_head": "decoder.px_r_decoder",
        "decoder.dropout_head": "decoder.px_dropout_decoder",
        "encoder_z2_z1.mean": "encoder_z2_z1.mean_encoder",
        "encoder_z2_z1.log_var": "encoder_z2_z1.var_encoder",
        "decoder_z1_z2.mean": "decoder_z1_z2.mean_decoder",
        "decoder_z1_z2.log_var": "decoder_z1_z2.var_decoder",
    }
    if hasattr(module, "classifier"):
        heads["classifier.out"] = f"classifier.classifier.{1 if module.classifier.hidden is not None else 0}"
    names = dict(module.named_modules())
    return {c: s for c, s in heads.items() if names.get(c) is not None}


def _px_r_to_cellvi(module, value: torch.Tensor) -> torch.Tensor:
    return value.reshape(1, -1) if module.dispersion == "gene" else value.t()


def to_cellvi_state(module: torch.nn.Module, state: dict, where) -> dict:
    """cellvi's state dict for ``module`` from scvi-tools' ``state``; every weight of ``module`` is
    filled, every weight of ``state`` that the computation uses is placed (else ModelFileError)."""
    src = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    own = module.state_dict()
    out, used = {}, set()

    def take(key):
        if key not in src:
            raise ModelFileError(f"{where}: the weight {key!r} is missing from model.pt.")
        used.add(key)
        return src[key]

    for cpath, spath in _fc_modules(module).items():
        fc = module.get_submodule(cpath)
        for i, linear in enumerate(fc.linears):
            w = take(f"{spath}.fc_layers.Layer {i}.0.weight")
            w_in = linear.weight.shape[1]
            out[f"{cpath}.linears.{i}.weight"] = w[:, :w_in]
            out[f"{cpath}.linears.{i}.bias"] = take(f"{spath}.fc_layers.Layer {i}.0.bias")
            pos = w_in
            for name, width in _layer_blocks(fc, i, w_in, i == 0):
                block = w[:, pos : pos + width]
                out[f"{cpath}.injections.{i}.{name}" + (".weight" if name == "continuous" else "")] = (
                    block if name == "continuous" else block.t()
                )
                pos += width
            if pos != w.shape[1]:
                raise ModelFileError(f"{where}: {spath} layer {i} has {w.shape[1]} inputs, cellvi expects {pos}.")
            for key in own:
                prefix = f"{cpath}.injections.{i}."
                if key.startswith(prefix) and key not in out:  # single-category tables, deeper continuous
                    out[key] = torch.zeros_like(own[key])
            for key in own:
                prefix = f"{cpath}.post.{i}.0."
                if key.startswith(prefix):
                    out[key] = take(f"{spath}.fc_layers.Layer {i}.1.{key[len(prefix) :]}")
    for cpath, spath in _heads(module).items():
        out[f"{cpath}.weight"] = take(f"{spath}.weight")
        out[f"{cpath}.bias"] = take(f"{spath}.bias")
    if getattr(module, "px_r", None) is not None:
        out["px_r"] = _px_r_to_cellvi(module, take("px_r"))
    if "library_log_means" in own:
        out["library_log_means"] = take("library_log_means").reshape(-1)
        out["library_log_vars"] = take("library_log_vars").reshape(-1)
    if "log_y_prior" in own:
        prior = take("y_prior").reshape(-1).float()
        out["log_y_prior"] = torch.log(prior / prior.sum())
    missing = sorted(set(own) - set(out))
    wrong = [k for k in own if k in out and tuple(out[k].shape) != tuple(own[k].shape)]
    ignorable = ("l_encoder.", "decoder.px_r_decoder.", "decoder.px_dropout_decoder.", "library_log_")
    unplaced = sorted(k for k in set(src) - used if not k.startswith(ignorable) and "num_batches_tracked" not in k)
    if missing or wrong or unplaced:
        raise ModelFileError(
            f"{where}: the scvi-tools weights do not fit cellvi's module: missing {missing[:3]}, wrong shapes "
            f"{[(k, tuple(out[k].shape), tuple(own[k].shape)) for k in wrong[:3]]}, unsupported weights {unplaced[:3]}."
        )
    return {k: v.to(own[k].dtype).contiguous() for k, v in out.items()}


# ---------------------------------------------------------------------- models
def load_model(cls, dir_path, adata=None, device: str | None = None):
    """A cellvi ``cls`` model from the scvi-tools folder ``dir_path`` (see :meth:`BaseModel.load`)."""
    import anndata
    import pandas as pd

    parsed = read_folder(dir_path, cls.__name__)
    registry: Registry = parsed["registry"]
    if adata is None:
        path = Path(dir_path) / "adata.h5ad"
        if not path.is_file():
            raise ModelFileError(f"{dir_path} holds no AnnData (saved with save_anndata=False); pass adata= to load().")
        try:
            adata = anndata.read_h5ad(path)
        except Exception as exc:
            raise ModelFileError(f"Cannot read {path}: {exc}") from exc
    registry.check_genes(adata)
    registry.cell_data(adata, validate_counts=False)  # missing columns and unknown categories fail here, clearly
    registry.summary["n_cells"] = int(adata.n_obs)
    model = build(cls, adata, registry, parsed["init_params"], device)
    model.module.load_state_dict(to_cellvi_state(model.module, parsed["state"], dir_path), strict=True)
    registry.attach(adata)  # only once everything has loaded
    model.module.eval()
    model.is_trained = parsed["is_trained"]
    if parsed["history"]:
        n = max(len(v) for v in parsed["history"].values())
        cols = {k: v for k, v in parsed["history"].items() if len(v) == n}
        model.history = pd.DataFrame(cols, index=pd.RangeIndex(n, name="epoch"))
    return model


def build(cls, adata, registry: Registry, init_params: dict, device: str | None = None):
    """An untrained ``cls`` model of ``adata`` with ``registry`` and ``init_params`` (not attached)."""
    from .._settings import settings

    model = cls.__new__(cls)
    old_device = settings.device
    try:
        settings.device = device if device is not None else old_device
        model._init(adata, registry, init_params)
    except (TypeError, ValueError, KeyError) as exc:
        raise ModelFileError(f"The saved init parameters do not fit {cls.__name__} ({exc!s:.200}).") from exc
    finally:
        settings.device = old_device
    return model
