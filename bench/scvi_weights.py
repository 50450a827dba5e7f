"""Copy a scvi-tools 1.4 VAE's weights into a cellvi VAE (bench-only helper for the parity check).

Only the architecture both use by default is mapped: one hidden layer, covariates (the batch) injected
into the decoder only (encode_covariates=False), observed library size, batch norm, no layer norm.
scvi-tools concatenates the one-hot batch to the decoder's input (Linear over [z, one-hot]); cellvi
adds a per-batch row to the same layer's output, so the weight splits into cellvi's linear weight
(the first n_latent columns) and its batch table (the remaining columns, transposed).
"""

from __future__ import annotations

import torch

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def scvi_to_cellvi_state(sd: dict, n_latent: int) -> dict:
    """cellvi VAE state_dict from a scvi-tools VAE state_dict ``sd`` (tensors)."""
    enc, dec = "z_encoder.encoder.fc_layers.Layer 0.", "decoder.px_decoder.fc_layers.Layer 0."
    w = sd[dec + "0.weight"]  # (n_hidden, n_latent + n_batch)
    out = {
        "z_encoder.encoder.linears.0.weight": sd[enc + "0.weight"],
        "z_encoder.encoder.linears.0.bias": sd[enc + "0.bias"],
        "z_encoder.mean.weight": sd["z_encoder.mean_encoder.weight"],
        "z_encoder.mean.bias": sd["z_encoder.mean_encoder.bias"],
        "z_encoder.log_var.weight": sd["z_encoder.var_encoder.weight"],
        "z_encoder.log_var.bias": sd["z_encoder.var_encoder.bias"],
        "decoder.decoder.linears.0.weight": w[:, :n_latent],
        "decoder.decoder.linears.0.bias": sd[dec + "0.bias"],
        "decoder.decoder.injections.0.tables.0": w[:, n_latent:].t(),
        "decoder.scale_head.weight": sd["decoder.px_scale_decoder.0.weight"],
        "decoder.scale_head.bias": sd["decoder.px_scale_decoder.0.bias"],
        "decoder.dropout_head.weight": sd["decoder.px_dropout_decoder.weight"],
        "decoder.dropout_head.bias": sd["decoder.px_dropout_decoder.bias"],
        "px_r": sd["px_r"].reshape(1, -1),
    }
    for k in BN:
        out[f"z_encoder.encoder.post.0.0.{k}"] = sd[enc + f"1.{k}"]
        out[f"decoder.decoder.post.0.0.{k}"] = sd[dec + f"1.{k}"]
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def cellvi_grads_as_scvi(grads: dict, n_latent: int) -> dict:
    """cellvi gradients (by cellvi parameter name) laid out as scvi-tools' parameters."""
    out = {}
    inv = {v: k for k, v in _names().items()}
    for name, g in grads.items():
        if name == "decoder.decoder.linears.0.weight":
            out["decoder.px_decoder.fc_layers.Layer 0.0.weight"] = torch.cat(
                [g, grads["decoder.decoder.injections.0.tables.0"].t()], dim=1
            )
        elif name == "px_r":
            out["px_r"] = g.reshape(-1)
        elif name in inv:
            out[inv[name]] = g
    return out


def _names() -> dict:
    enc, dec = "z_encoder.encoder.fc_layers.Layer 0.", "decoder.px_decoder.fc_layers.Layer 0."
    names = {
        enc + "0.weight": "z_encoder.encoder.linears.0.weight",
        enc + "0.bias": "z_encoder.encoder.linears.0.bias",
        "z_encoder.mean_encoder.weight": "z_encoder.mean.weight",
        "z_encoder.mean_encoder.bias": "z_encoder.mean.bias",
        "z_encoder.var_encoder.weight": "z_encoder.log_var.weight",
        "z_encoder.var_encoder.bias": "z_encoder.log_var.bias",
        dec + "0.bias": "decoder.decoder.linears.0.bias",
        "decoder.px_scale_decoder.0.weight": "decoder.scale_head.weight",
        "decoder.px_scale_decoder.0.bias": "decoder.scale_head.bias",
        "decoder.px_dropout_decoder.weight": "decoder.dropout_head.weight",
        "decoder.px_dropout_decoder.bias": "decoder.dropout_head.bias",
    }
    for k in ("weight", "bias"):
        names[enc + f"1.{k}"] = f"z_encoder.encoder.post.0.0.{k}"
        names[dec + f"1.{k}"] = f"decoder.decoder.post.0.0.{k}"
    return names
