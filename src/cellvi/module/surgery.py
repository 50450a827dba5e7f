"""Architecture surgery for query mapping (scArches, Lotfollahi et al. 2022) on a trained module.

Two steps on a module holding the reference's weights: :func:`freeze_for_query` decides what may
still learn, then :func:`extend_categories` appends rows for the query's new categories (batch and
other categorical covariates, the matching rows of ``px_r`` and of the library prior). Only the new
rows, and what the options leave trainable, receive gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..nn.layers import _zero_first_rows

# modules of scANVI that map a reference latent to classes and hierarchical priors; they stay fixed
_HIERARCHY = ("encoder_z2_z1", "decoder_z1_z2")


def freeze_for_query(
    module: nn.Module,
    freeze_expression: bool = True,
    freeze_decoder_first_layer: bool = True,
    freeze_batchnorm_encoder: bool = True,
    freeze_batchnorm_decoder: bool = False,
    freeze_dropout: bool = False,
    freeze_classifier: bool = True,
) -> None:
    """Set ``requires_grad`` (and batch-norm running statistics) for query training.

    Everything is frozen except: the library encoder (if any), the first linear map of the encoder
    (``freeze_expression=False``) or decoder (``freeze_decoder_first_layer=False``), the batch-norm
    scale and shift of the decoder (unless ``freeze_batchnorm_decoder``) or encoder (unless
    ``freeze_batchnorm_encoder``), and scANVI's classifier (``freeze_classifier=False``). A frozen
    batch norm also keeps its running statistics (momentum 0), so reference cells encode as before.
    ``freeze_dropout`` switches dropout off.
    """
    module.requires_grad_(False)
    trainable: list[nn.Module] = []
    if getattr(module, "l_encoder", None) is not None:
        trainable.append(module.l_encoder)
    if not freeze_expression:
        trainable.append(module.z_encoder.encoder.linears[0])
    if not freeze_decoder_first_layer:
        trainable.append(module.decoder.decoder.linears[0])
    if not freeze_classifier and hasattr(module, "classifier"):
        trainable.append(module.classifier)
    for part in trainable:
        part.requires_grad_(True)
    for name, sub in module.named_modules():
        top = name.split(".")[0]
        if isinstance(sub, nn.Dropout) and freeze_dropout:
            sub.p = 0.0
        if not isinstance(sub, nn.BatchNorm1d) or top == "l_encoder":
            continue
        if top == "classifier":
            frozen = freeze_classifier
        elif top in _HIERARCHY:
            frozen = True
        else:
            frozen = freeze_batchnorm_decoder if top == "decoder" else freeze_batchnorm_encoder
        sub.requires_grad_(not frozen)
        if frozen:
            sub.momentum = 0.0  # running stats unchanged by training-mode passes


def extend_categories(
    module: nn.Module,
    n_new_batch: int,
    n_new_per_cov: Sequence[int] = (),
    n_new_labels: int = 0,
    new_library_log_means: Sequence[float] = (),
    new_library_log_vars: Sequence[float] = (),
    freeze_existing: bool = True,
) -> None:
    """Append rows for new categories to every covariate table of the encoders and the decoder.

    n_new_batch, n_new_per_cov: new batches and new categories of each extra categorical covariate.
    n_new_labels: new label categories (only "gene-label" dispersion of scVI uses them).
    new_library_log_means / _vars: (n_new_batch,) library-size prior of the new batches (used when the
    library is latent). New covariate rows start at zero (no offset); new ``px_r`` rows at the mean of
    the reference's rows. With ``freeze_existing`` the reference rows get no gradient.
    """
    counts = [n_new_batch, *n_new_per_cov]
    for part in ("z_encoder", "l_encoder", "decoder"):
        sub = getattr(module, part, None)
        if sub is None:
            continue
        layers = sub.encoder if hasattr(sub, "encoder") else sub.decoder
        # the library encoder trains whole during query training, its old rows included
        layers.extend_categories(counts, freeze_existing and part != "l_encoder")
    key = {"gene-batch": n_new_batch, "gene-label": n_new_labels}.get(module.dispersion, 0)
    if key and module.px_r is not None:
        old = module.px_r
        rows = old.detach().mean(0, keepdim=True).expand(key, -1)
        module.px_r = nn.Parameter(torch.cat([old.detach(), rows], dim=0))
        if freeze_existing:
            module.px_r.register_hook(_zero_first_rows(old.shape[0]))
    if n_new_batch and hasattr(module, "library_log_means"):
        dev = module.library_log_means.device
        means = torch.as_tensor(list(new_library_log_means), dtype=torch.float32, device=dev)
        lvars = torch.as_tensor(list(new_library_log_vars), dtype=torch.float32, device=dev)
        module.library_log_means = torch.cat([module.library_log_means, means])
        module.library_log_vars = torch.cat([module.library_log_vars, lvars])
    module.n_batch += n_new_batch
