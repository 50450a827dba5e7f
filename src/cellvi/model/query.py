"""Query mapping (scArches): put new data onto a trained reference model without retraining it.

``prepare_query_anndata`` gives the query the reference's genes (reordered, missing ones as zeros).
``load_query_data`` builds a model for the query from the reference's weights, grows the covariate
tables by the query's new batches and categories (see :mod:`cellvi.module.surgery`) and freezes the
rest, so that training it on the query learns only the new batches' weights: the reference cells keep
their latent representation. Both are exposed as ``SCVI.prepare_query_anndata`` /
``SCVI.load_query_data`` (and the same on SCANVI).
"""

from __future__ import annotations

import copy
import os
import warnings

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..data import Registry
from ..data.matrix import count_matrix
from ..errors import (
    InvalidDataError,
    InvalidParameterError,
    InvalidTypeError,
    ModelFileError,
    RegistryMismatchError,
)
from ..module.surgery import extend_categories, freeze_for_query
from . import _archive, _files

MIN_GENE_FRACTION = 0.8


def _reference_parts(reference):
    """(class name, registry, init_params, weights source) of a model or a saved model folder."""
    from .base import BaseModel

    if isinstance(reference, BaseModel):
        return type(reference).__name__, reference.registry, dict(reference.init_params), reference
    if isinstance(reference, (str, os.PathLike)):
        from . import _scvi_tools_format

        if _scvi_tools_format.is_scvi_tools_folder(reference):  # saved by scvi-tools: read safely, mapped
            parsed = _scvi_tools_format.read_folder(reference, None)
            return parsed["registry"].model_name, parsed["registry"], parsed["init_params"], parsed
        meta = _files.read_meta(reference)
        return meta["model_class"], _files.registry_of(meta, reference), dict(meta["init_params"]), meta
    raise InvalidTypeError(
        f"reference must be a trained model or a saved model folder, not {type(reference).__name__}."
    )


def one_reference(reference, reference_model):
    """The reference given positionally (cellvi) or as scvi-tools' ``reference_model=``; exactly one."""
    if (reference is None) == (reference_model is None):
        raise InvalidParameterError("Give the reference model (or its folder) once: reference or reference_model.")
    return reference if reference is not None else reference_model


def prepare_query_anndata(adata, reference, return_reference_var_names: bool = False, inplace: bool = False):
    """An AnnData with exactly the reference's genes in the reference's order: genes the query lacks
    are added with zero counts (a warning says how many), genes the reference lacks are dropped.
    ``X`` and every layer are reordered; obs and obsm are copied. ``reference``: a model, a folder or an
    archive. With ``inplace``, ``adata`` itself becomes that AnnData (its uns and obsp kept) and None is
    returned."""
    with _archive.opened(reference) as folder:
        _, registry, _, _ = _reference_parts(folder)
    ref = pd.Index(registry.var_names)
    if return_reference_var_names:
        return ref
    if inplace and adata.is_view:
        raise InvalidTypeError(
            "prepare_query_anndata cannot change a view in place; pass adata.copy() or inplace=False."
        )
    if not adata.var_names.is_unique:
        raise InvalidDataError("The query's gene names are duplicated; make them unique first.")
    src = adata.var_names.get_indexer(ref)  # column of each reference gene in the query, -1 if absent
    found = src >= 0
    if not found.any():
        raise RegistryMismatchError(
            f"None of the reference's {len(ref)} genes is in the query (reference genes e.g. {list(ref[:3])})."
        )
    n_missing = int((~found).sum())
    if n_missing:
        msg = f"{n_missing} of the reference's {len(ref)} genes are not in the query; they are padded with zeros."
        if found.mean() < MIN_GENE_FRACTION:
            msg += f" Less than {MIN_GENE_FRACTION:.0%} of the genes are shared: the mapping may be poor."
        warnings.warn(msg, UserWarning, stacklevel=3)
    # a (n_query_genes, n_reference_genes) 0/1 matrix that moves each shared gene to its new column
    select = sp.csr_matrix(
        (np.ones(found.sum(), dtype=np.float32), (src[found], np.flatnonzero(found))),
        shape=(adata.n_vars, len(ref)),
    )

    def reorder(matrix):
        return sp.csr_matrix(sp.csr_matrix(matrix) @ select).astype(np.float32)

    out = anndata.AnnData(
        X=reorder(count_matrix(adata, None)),
        obs=adata.obs.copy(),
        var=pd.DataFrame(index=ref.copy()),
        obsm={k: v.copy() for k, v in adata.obsm.items()},
        layers={k: reorder(count_matrix(adata, k)) for k in adata.layers.keys()},
    )
    if not inplace:
        return out
    out.uns = adata.uns
    for key, value in adata.obsp.items():
        out.obsp[key] = value
    adata._init_as_actual(out)  # what scvi-tools does: the same object now holds the padded data
    return None


def load_query_data(
    cls,
    adata,
    reference,
    freeze_expression: bool = True,
    freeze_decoder_first_layer: bool = True,
    freeze_batchnorm_encoder: bool = True,
    freeze_batchnorm_decoder: bool = False,
    freeze_dropout: bool = False,
    freeze_classifier: bool = True,
    unfrozen: bool = False,
):
    """A model of class ``cls`` for the query ``adata``, initialised from ``reference`` (see
    :meth:`cellvi.model.SCVI.load_query_data`); a saved archive is checked and read from a temporary copy."""
    if _archive.is_archive(reference):
        with _archive.opened(reference) as folder:
            return load_query_data(
                cls,
                adata,
                folder,
                freeze_expression,
                freeze_decoder_first_layer,
                freeze_batchnorm_encoder,
                freeze_batchnorm_decoder,
                freeze_dropout,
                freeze_classifier,
                unfrozen,
            )
    name, ref_registry, init_params, source = _reference_parts(reference)
    if name != cls.__name__:
        raise ModelFileError(f"The reference is a {name} model; map the query with cellvi.model.{name}.")
    ref_registry.check_genes(adata)
    args = ref_registry.setup_args
    batch_key = args["batch_key"]
    if batch_key is not None and batch_key in adata.obs.columns and adata.obs[batch_key].isna().any():
        n = int(adata.obs[batch_key].isna().sum())
        raise InvalidDataError(
            f"adata.obs[{batch_key!r}] (the batch) has {n} missing values (NaN) in the query. Every query "
            "cell needs a batch: fill them (for example with the name of the query) or remove those cells."
        )
    unlabeled = args.get("unlabeled_category")
    if unlabeled is not None and args["labels_key"] not in adata.obs.columns:
        adata.obs[args["labels_key"]] = pd.Categorical([unlabeled] * adata.n_obs)  # an unannotated query
    query = Registry.from_anndata(
        adata,
        args["layer"],
        batch_key,
        args["labels_key"],
        args["size_factor_key"],
        args["categorical_covariate_keys"],
        args["continuous_covariate_keys"],
        cls._model_name,
        {k: v for k, v in args.items() if k not in _STANDARD_ARGS},
    )
    registry, new = _merged_registry(ref_registry, query)

    model = cls.__new__(cls)
    model._init(adata, ref_registry, init_params)
    if isinstance(source, dict) and "state" in source:  # a scvi-tools folder
        from . import _scvi_tools_format

        model.module.load_state_dict(_scvi_tools_format.to_cellvi_state(model.module, source["state"], reference))
    elif isinstance(source, dict):
        _files.load_weights_into(model.module, reference, source)
    else:
        model.module.load_state_dict(copy.deepcopy(source.module.state_dict()))
    if not unfrozen:
        freeze_for_query(
            model.module,
            freeze_expression,
            freeze_decoder_first_layer,
            freeze_batchnorm_encoder,
            freeze_batchnorm_decoder,
            freeze_dropout,
            freeze_classifier,
        )
    q_batches = query.categories["batch"]
    new_lib = [q_batches.index(b) for b in new["batch"]]
    extend_categories(
        model.module,
        len(new["batch"]),
        [len(new[k]) for k in ref_registry.extra_categorical_keys],
        len(new["labels"]),
        [query.summary["library_log_means"][i] for i in new_lib],
        [query.summary["library_log_vars"][i] for i in new_lib],
        freeze_existing=not unfrozen,
    )
    model.module.to(model.device)
    model.module.eval()
    model.registry = registry
    registry.attach(adata)
    model._data_cache = None
    model._plan_defaults = {"weight_decay": 0.0}  # L2 would move the frozen reference rows
    from .base import BaseModel

    # state saved beside the weights (SCANVI.calibrate()'s temperature and unknown-type detector)
    if isinstance(source, BaseModel):
        model._restore_extras(source._saved_extras())
    elif isinstance(source, dict) and "state" not in source:
        model._restore_extras(source.get("extras") or {})
    return model


_STANDARD_ARGS = (
    "layer",
    "batch_key",
    "labels_key",
    "size_factor_key",
    "categorical_covariate_keys",
    "continuous_covariate_keys",
)


def _merged_registry(ref: Registry, query: Registry) -> tuple[Registry, dict[str, list[str]]]:
    """The reference's registry with the query's new categories appended (reference codes unchanged),
    and the new categories per field. scANVI's classes cannot grow: a new label is an error."""
    categories, new = {}, {}
    for name, known in ref.categories.items():
        new[name] = [c for c in query.categories[name] if c not in set(known)]
        categories[name] = list(known) + new[name]
    unlabeled = ref.setup_args.get("unlabeled_category")
    if unlabeled is not None and new["labels"]:
        key = ref.setup_args["labels_key"]
        raise RegistryMismatchError(
            f"adata.obs[{key!r}] has labels the reference was not trained on: {new['labels'][:5]}. scANVI "
            f"cannot learn new classes from a query; set those cells to {unlabeled!r} (unlabelled)."
        )
    summary = dict(ref.summary)
    q_batches = query.categories["batch"]
    extra = [q_batches.index(b) for b in new["batch"]]
    summary.update(
        n_cells=query.summary["n_cells"],
        n_empty_cells=query.summary["n_empty_cells"],
        n_batch=len(categories["batch"]),
        n_cats_per_cov=[len(categories[k]) for k in ref.extra_categorical_keys],
        library_log_means=list(ref.summary["library_log_means"])
        + [query.summary["library_log_means"][i] for i in extra],
        library_log_vars=list(ref.summary["library_log_vars"]) + [query.summary["library_log_vars"][i] for i in extra],
    )
    if unlabeled is None:
        summary["n_labels"] = len(categories["labels"])
    registry = Registry(
        dict(ref.setup_args), list(ref.var_names), categories, list(ref.continuous_keys), summary, ref.model_name
    )
    return registry, new
