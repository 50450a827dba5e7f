"""Parity of cellvi's scVI with scvi-tools 1.4.2: the same weights give the same loss, gradients and latent.

Two stages, one per environment:

    bench/.venv-scvi/bin/python bench/integration_parity.py --stage scvi   --out /tmp/parity.pt
    .venv/bin/python            bench/integration_parity.py --stage cellvi --out /tmp/parity.pt

Stage scvi trains a scvi-tools SCVI (defaults, --epochs) on pbmc_3chemistries, then on one fixed
minibatch of 128 cells records: the loss (kl_weight 0.5) and every parameter's gradient in train mode
with dropout off (batch norm on batch statistics; dropout masks cannot be shared) and a fixed noise
draw for z; the loss and the latent (posterior mean) in eval mode. Stage cellvi copies the weights
into cellvi's VAE (bench/scvi_weights.py), computes the same, and writes
bench/results/integration_parity.{json,md} with the largest relative differences.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("CELLVI_DATA_DIR", HERE.parent.parent / "shared" / "data")) / "pbmc_3chemistries.h5ad"
KL_WEIGHT = 0.5


def stage_scvi(a) -> None:
    import anndata as ad
    import scvi

    torch.set_num_threads(1)
    scvi.settings.seed = 0
    adata = ad.read_h5ad(DATA)
    scvi.model.SCVI.setup_anndata(adata, batch_key="batch")
    model = scvi.model.SCVI(adata)
    model.train(max_epochs=a.epochs, enable_progress_bar=False)
    module = model.module
    rows = np.random.default_rng(0).choice(adata.n_obs, 128, replace=False)
    dl = model._make_data_loader(adata=adata, indices=np.sort(rows), batch_size=128, shuffle=False)
    tensors = next(iter(dl))
    eps = torch.randn(128, module.n_latent, generator=torch.Generator().manual_seed(1))
    import torch.distributions as td

    orig = td.Normal.rsample
    td.Normal.rsample = lambda self, sample_shape=(): self.loc + self.scale * eps
    try:
        module.train()
        for m in module.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        state = {k: v.detach().clone() for k, v in module.state_dict().items()}  # before BN stats move
        module.zero_grad()
        _, _, out = module(tensors, loss_kwargs={"kl_weight": KL_WEIGHT})
        out.loss.backward()
        grads = {k: p.grad.detach().clone() for k, p in module.named_parameters() if p.grad is not None}
        train_loss = float(out.loss.detach())
        module.load_state_dict(state)
        module.eval()
        with torch.no_grad():
            _, _, out_eval = module(tensors, loss_kwargs={"kl_weight": KL_WEIGHT})
            inf = module.inference(tensors["X"], tensors["batch"])
    finally:
        td.Normal.rsample = orig
    torch.save(
        {
            "state": state,
            "X": tensors["X"],
            "batch": tensors["batch"].reshape(-1).long(),
            "eps": eps,
            "train_loss": train_loss,
            "grads": grads,
            "eval_loss": float(out_eval.loss),
            "eval_rec": out_eval.reconstruction_loss["reconstruction_loss"].detach(),
            "latent": inf["qz"].loc.detach(),
            "epochs": a.epochs,
            "scvi": scvi.__version__,
            "n_latent": module.n_latent,
            "n_batch": module.n_batch,
        },
        a.out,
    )
    print("scvi-tools stage written", a.out)


def stage_cellvi(a) -> None:
    sys.path.insert(0, str(HERE))
    from cellvi.module import VAE
    from scvi_weights import cellvi_grads_as_scvi, scvi_to_cellvi_state

    torch.set_num_threads(1)
    ref = torch.load(a.out, weights_only=False)
    X, eps = ref["X"], ref["eps"]
    vae = VAE(n_input=X.shape[1], n_batch=ref["n_batch"], n_latent=ref["n_latent"])
    vae.load_state_dict(scvi_to_cellvi_state(ref["state"], ref["n_latent"]))
    batch = {"X": X, "batch": ref["batch"], "labels": torch.zeros_like(ref["batch"])}
    orig = torch.randn_like
    torch.randn_like = lambda t, **kw: eps.to(t.dtype) if t.shape == eps.shape else orig(t, **kw)
    try:
        vae.train()
        for m in vae.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        out = vae.loss(batch, kl_weight=KL_WEIGHT)
        out["loss"].backward()
        grads = cellvi_grads_as_scvi(
            {k: p.grad for k, p in vae.named_parameters() if p.grad is not None}, ref["n_latent"]
        )
        train_loss = float(out["loss"].detach())
        vae.load_state_dict(scvi_to_cellvi_state(ref["state"], ref["n_latent"]))
        vae.eval()
        with torch.no_grad():
            out_eval = vae.loss(batch, kl_weight=KL_WEIGHT)
            latent = vae.latent(batch)
    finally:
        torch.randn_like = orig

    def rel(a_, b_):
        a_, b_ = torch.as_tensor(a_, dtype=torch.float64), torch.as_tensor(b_, dtype=torch.float64)
        return float((a_ - b_).abs().max() / b_.abs().max().clamp_min(1e-30))

    grad_rel = {k: rel(grads[k], g) for k, g in ref["grads"].items() if k in grads}
    grad_max = {k: float(g.abs().max()) for k, g in ref["grads"].items() if k in grads}
    # a linear layer's bias right before batch norm (train mode) has zero gradient in exact arithmetic:
    # both libraries return round-off there, so its relative difference says nothing
    pre_bn = [k for k in grad_rel if k.endswith("Layer 0.0.bias")]
    scale = max(grad_max.values())
    checked = {k: v for k, v in grad_rel.items() if k not in pre_bn}
    missing = sorted(set(k for k in ref["grads"] if not k.startswith("l_encoder")) - set(grads))
    res = {
        "scvi_tools": ref["scvi"],
        "epochs_trained": ref["epochs"],
        "minibatch_cells": int(X.shape[0]),
        "kl_weight": KL_WEIGHT,
        "train_mode_loss": {
            "scvi_tools": ref["train_loss"],
            "cellvi": train_loss,
            "rel_diff": abs(train_loss - ref["train_loss"]) / abs(ref["train_loss"]),
        },
        "eval_mode_loss": {
            "scvi_tools": ref["eval_loss"],
            "cellvi": float(out_eval["loss"]),
            "rel_diff": abs(float(out_eval["loss"]) - ref["eval_loss"]) / abs(ref["eval_loss"]),
        },
        "eval_reconstruction_max_rel_diff": rel(out_eval["reconstruction_loss"], ref["eval_rec"]),
        "latent_max_rel_diff": rel(latent, ref["latent"]),
        "gradient_max_rel_diff": max(checked.values()),
        "gradient_rel_diff": grad_rel,
        "gradient_max_abs": grad_max,
        "pre_batchnorm_biases": pre_bn,
        "pre_batchnorm_bias_grad_max_abs_relative_to_largest_gradient": max(grad_max[k] for k in pre_bn) / scale,
        "scvi_gradients_without_cellvi_counterpart": missing,
    }
    out_dir = Path(a.results)
    with open(out_dir / "integration_parity.json", "w") as f:
        json.dump(res, f, indent=1)
    lines = [
        "# Parity: scvi-tools weights in cellvi's VAE",
        "",
        f"scvi-tools {ref['scvi']} SCVI trained {ref['epochs']} epochs on pbmc_3chemistries (defaults); its "
        f"weights copied into cellvi's VAE (bench/scvi_weights.py); one fixed minibatch of {X.shape[0]} "
        f"cells, the same noise draw for z, kl_weight {KL_WEIGHT}. Train mode with dropout off (its masks "
        "cannot be shared); eval mode as get_latent_representation. Relative difference = max |a-b| / max |b|.",
        "",
        "| quantity | scvi-tools | cellvi | max relative difference |",
        "|---|---|---|---|",
        f"| loss, train mode | {ref['train_loss']:.6f} | {train_loss:.6f} | {res['train_mode_loss']['rel_diff']:.1e} |",
        f"| loss, eval mode | {ref['eval_loss']:.6f} | {float(out_eval['loss']):.6f} | {res['eval_mode_loss']['rel_diff']:.1e} |",
        f"| per-cell reconstruction loss, eval | | | {res['eval_reconstruction_max_rel_diff']:.1e} |",
        f"| latent (posterior mean), eval | | | {res['latent_max_rel_diff']:.1e} |",
        f"| gradients ({len(checked)} parameters), worst | | | {res['gradient_max_rel_diff']:.1e} |",
        "",
        f"The two biases before batch norm ({', '.join(f'`{k}`' for k in pre_bn)}) have zero gradient in exact "
        "arithmetic (batch norm subtracts the batch mean); both libraries return round-off there, at most "
        f"{res['pre_batchnorm_bias_grad_max_abs_relative_to_largest_gradient']:.1e} of the largest gradient "
        "entry, so they are left out of the worst case.",
        "",
        "Gradient per parameter: " + ", ".join(f"`{k}` {v:.1e}" for k, v in grad_rel.items()),
        "",
        f"scvi-tools parameters with a gradient and no cellvi counterpart: {missing or 'none'} "
        "(scvi-tools builds an unused library encoder; it gets no gradient with the observed library).",
        "",
    ]
    (out_dir / "integration_parity.md").write_text("\n".join(lines))
    print("\n".join(lines))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=["scvi", "cellvi"], required=True)
    p.add_argument("--out", required=True, help="the .pt file stage scvi writes and stage cellvi reads")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--results", default=str(HERE / "results"))
    a = p.parse_args(argv)
    (stage_scvi if a.stage == "scvi" else stage_cellvi)(a)


if __name__ == "__main__":
    main()
