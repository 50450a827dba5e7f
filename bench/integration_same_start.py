"""cellvi and scvi-tools 1.4.2 trained from the same initial weights on the same minibatches: where do they part?

Two stages, one per environment (the scvi-tools stage first):

    bench/.venv-scvi/bin/python bench/integration_same_start.py --stage scvi   --out /tmp/same.pt
    .venv/bin/python            bench/integration_same_start.py --stage cellvi --out /tmp/same.pt

Stage scvi builds ``scvi.model.SCVI(adata)`` on pbmc_3chemistries (defaults, ``settings.seed``) and
keeps its *untrained* weights. Both stages then run the same plain loop, each over its own library's
module, loss and optimiser (scvi-tools: ``module(tensors, loss_kwargs={"kl_weight": w})`` and
``TrainingPlan.configure_optimizers()``, torch's Adam; cellvi: ``VAE.loss`` and its fused Adam,
``cellvi.train.optim``), and each its own library's minibatch tensors (scvi-tools' AnnDataLoader,
cellvi's MinibatchLoader with the likelihood terms of its default path), over one list of minibatch
index arrays: the 90/10 split and the per-epoch shuffles are drawn once here, cut as cellvi cuts them
(128 cells, a last minibatch of one cell merged), and rows kept sorted within a minibatch. The KL
weight is the per-epoch warm-up both libraries use by default (min(1, epoch / 400)). Before the loop
both call ``torch.manual_seed(seed)``, so that their dropout masks and the reparameterisation noise
come from the same stream, in the same order, as long as the two draw the same shapes in the same
order (the results show whether they do).

Recorded per step: the training loss. At the end (eval mode): the latent (posterior mean) of every
cell and the validation loss. Stage cellvi compares them and scores both latents with scib-metrics
(:func:`cellvi.analysis.benchmark_integration`, exact kNN), with dropout at its default (0.1 in the
encoder) and with every dropout set to 0. Results are added to bench/results/integration_parity.{json,md}
(section "same_start"; the weight-copy figures of bench/integration_parity.py stay).
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
SECTION = "## Same initial weights, same minibatches"
THRESHOLDS = (1e-6, 1e-4, 1e-2)


def load_adata():
    import anndata as ad

    adata = ad.read_h5ad(DATA)
    adata.obs["batch"] = adata.obs["batch"].astype(str).astype("category")
    return adata


def schedule(n_cells: int, epochs: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[list[np.ndarray]]]:
    """Train and validation positions (90/10) and, per epoch, the list of sorted minibatch row arrays."""
    perm = np.random.default_rng([seed, 1]).permutation(n_cells)
    n_train = int(np.ceil(0.9 * n_cells))
    train, val = np.sort(perm[:n_train]), np.sort(perm[n_train:])
    bounds = list(range(0, n_train, 128)) + [n_train]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < 2:
        bounds.pop(-2)
    epochs_rows = []
    for e in range(epochs):
        order = train[np.random.default_rng([seed, e]).permutation(n_train)]
        epochs_rows.append([np.sort(order[a:b]) for a, b in zip(bounds[:-1], bounds[1:])])
    return train, val, epochs_rows


def no_dropout(module: torch.nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


def run_loop(module, optimizer_step, loss_fn, batch_of, rows_per_epoch, seed: int) -> list[float]:
    """The plain loop shared by both stages. ``loss_fn(batch, kl_weight)`` -> scalar loss; returns
    the loss of every step, before that step's update."""
    torch.manual_seed(seed)
    losses = []
    for epoch, parts in enumerate(rows_per_epoch):
        module.train()
        kl_weight = min(1.0, epoch / 400)
        for rows in parts:
            loss = loss_fn(batch_of(rows), kl_weight)
            optimizer_step(loss)
            losses.append(float(loss.detach()))
    return losses


def stage_scvi(a) -> None:
    import scvi
    from scvi.train import TrainingPlan

    torch.set_num_threads(1)
    scvi.settings.seed = a.seed
    adata = load_adata()
    scvi.model.SCVI.setup_anndata(adata, batch_key="batch")
    model = scvi.model.SCVI(adata)
    init = {k: v.detach().clone() for k, v in model.module.state_dict().items()}
    dl = model._make_data_loader(adata=adata, batch_size=adata.n_obs, shuffle=False)
    full = next(iter(dl))  # every cell in file order; minibatches are row selections of it
    train, val, rows = schedule(adata.n_obs, a.epochs, a.seed)
    encoder_dropouts = [m for m in model.module.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0]
    out = {"init": init, "n_latent": model.module.n_latent, "n_batch": model.module.n_batch, "runs": {}}
    one_ulp = {
        k: torch.nextafter(v, torch.full_like(v, np.inf)) if v.is_floating_point() else v for k, v in init.items()
    }
    # the control: scvi-tools against itself, every initial weight moved by one float32 ulp
    for name, dropout, start in (("dropout", True, init), ("no_dropout", False, init), ("scvi_one_ulp", True, one_ulp)):
        module = model.module
        module.load_state_dict(start)
        for m in module.modules():  # scvi-tools' defaults: 0.1 in the encoder, 0 elsewhere
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.1 if dropout and m in encoder_dropouts else 0.0
        opt = TrainingPlan(module).configure_optimizers()["optimizer"]

        def step(loss, opt=opt, module=module):
            opt.zero_grad()
            loss.backward()
            opt.step()

        def loss_fn(batch, kl_weight, module=module):
            return module(batch, loss_kwargs={"kl_weight": kl_weight})[2].loss

        losses = run_loop(module, step, loss_fn, lambda r: {k: v[r] for k, v in full.items()}, rows, a.seed)
        module.eval()
        with torch.no_grad():
            latent = module.inference(full["X"], full["batch"])["qz"].loc
            val_loss = float(loss_fn({k: v[val] for k, v in full.items()}, 1.0))
        out["runs"][name] = {"losses": losses, "latent": latent.detach().numpy(), "val_loss": val_loss}
    out.update(train=train, val=val, epochs=a.epochs, seed=a.seed, scvi=scvi.__version__)
    torch.save(out, a.out)
    print("scvi-tools stage written", a.out)


def first_parting(a_: np.ndarray, b_: np.ndarray) -> dict:
    rel = np.abs(a_ - b_) / np.abs(b_)
    res = {}
    for t in THRESHOLDS:
        over = np.flatnonzero(rel > t)
        res[f"{t:g}"] = int(over[0]) + 1 if len(over) else None  # 1-based step
    return res


def compare(losses, latent, val_loss, other: dict, last_epoch_steps: int) -> dict:
    """Per-step loss and final latent of one run against ``other`` (a scvi-tools run of stage scvi)."""
    ours, theirs = np.asarray(losses), np.asarray(other["losses"])
    rel = np.abs(ours - theirs) / np.abs(theirs)
    latent, lat_s = np.asarray(latent), np.asarray(other["latent"])
    corr = [float(np.corrcoef(latent[:, j], lat_s[:, j])[0, 1]) for j in range(latent.shape[1])]
    return {
        "steps": len(ours),
        "first_step_rel_diff_over": first_parting(ours, theirs),
        "rel_diff_at_steps": {str(s): float(rel[s - 1]) for s in (1, 2, 5, 10, 50, 100, len(ours)) if s <= len(ours)},
        "loss_cellvi": [float(x) for x in ours],
        "loss_scvi_tools": [float(x) for x in theirs],
        "final_loss_mean_last_epoch": {
            "cellvi": float(ours[-last_epoch_steps:].mean()),
            "scvi_tools": float(theirs[-last_epoch_steps:].mean()),
        },
        "validation_loss": {"cellvi": val_loss, "scvi_tools": other["val_loss"]},
        "latent_max_rel_diff": float(np.abs(latent - lat_s).max() / np.abs(lat_s).max()),
        "latent_dim_correlation": {"min": min(corr), "mean": float(np.mean(corr))},
    }


def stage_cellvi(a) -> None:
    import cellvi
    from cellvi.analysis import benchmark_integration
    from cellvi.train.optim import AdamStep, make_adam

    sys.path.insert(0, str(HERE))
    from integration import unintegrated_pca
    from scvi_weights import scvi_to_cellvi_state

    torch.set_num_threads(1)
    ref = torch.load(a.out, weights_only=False)
    adata = load_adata()
    cellvi.model.SCVI.setup_anndata(adata, batch_key="batch")
    model = cellvi.model.SCVI(adata)
    vae = model.module
    data = model._cell_data()
    loader = model._loader(data, None, 128, False, ref["seed"])
    train, val, rows = schedule(adata.n_obs, ref["epochs"], ref["seed"])
    assert np.array_equal(train, ref["train"]) and np.array_equal(val, ref["val"])
    state = scvi_to_cellvi_state(ref["init"], ref["n_latent"])
    adata.obsm["PCA"] = unintegrated_pca(adata)
    runs, keys = {}, ["PCA"]
    for name in ("dropout", "no_dropout"):
        vae.load_state_dict(state)
        if name == "no_dropout":  # the dropout run comes first, at cellvi's defaults
            no_dropout(vae)
        opt = make_adam([p for p in vae.parameters() if p.requires_grad], lr=1e-3, eps=0.01, weight_decay=1e-6)
        adam = AdamStep(opt)

        def step(loss, opt=opt, adam=adam):
            for p in vae.parameters():
                p.grad = None
            loss.backward()
            adam()

        losses = run_loop(vae, step, lambda b, w: vae.loss(b, kl_weight=w)["loss"], loader.batch, rows, ref["seed"])
        vae.eval()
        with torch.no_grad():
            latent = vae.latent(loader.batch(np.arange(adata.n_obs))).numpy()
            val_loss = float(vae.loss(loader.batch(val), kl_weight=1.0)["loss"])
        runs[name] = compare(losses, latent, val_loss, ref["runs"][name], len(rows[-1]))
        for lib, z in (("cellvi", latent), ("scvi-tools", ref["runs"][name]["latent"])):
            adata.obsm[f"{lib} {name}"] = z
            keys.append(f"{lib} {name}")
    ctl = ref["runs"]["scvi_one_ulp"]  # scvi-tools against itself, initial weights one ulp apart
    runs["scvi_one_ulp"] = compare(ctl["losses"], ctl["latent"], ctl["val_loss"], ref["runs"]["dropout"], len(rows[-1]))
    adata.obsm["cellvi scvi_one_ulp"] = ctl["latent"]  # "cellvi" = the first of the pair: here scvi-tools + 1 ulp
    adata.obsm["scvi-tools scvi_one_ulp"] = ref["runs"]["dropout"]["latent"]
    keys += ["cellvi scvi_one_ulp", "scvi-tools scvi_one_ulp"]
    df = benchmark_integration(adata, keys, "batch", "cell_type", pre_integrated_obsm_key="PCA", neighbors="exact")
    for name in runs:
        runs[name]["scib"] = {
            lib: {k: float(df.loc[f"{lib} {name}", k]) for k in ("Total", "Bio conservation", "Batch correction")}
            for lib in ("cellvi", "scvi-tools")
        }
    write_results(ref, runs, Path(a.results))


def write_results(ref: dict, runs: dict, out_dir: Path) -> None:
    path_json = out_dir / "integration_parity.json"
    res = json.loads(path_json.read_text()) if path_json.exists() else {}
    res["same_start"] = {
        "scvi_tools": ref["scvi"],
        "dataset": "pbmc_3chemistries",
        "epochs": ref["epochs"],
        "seed": ref["seed"],
        "runs": runs,
    }
    path_json.write_text(json.dumps(res, indent=1))
    md = out_dir / "integration_parity.md"
    text = md.read_text() if md.exists() else ""
    text = text.split(SECTION)[0].rstrip() + "\n\n"
    n_steps = runs["dropout"]["steps"]
    lines = [
        SECTION,
        "",
        f"`bench/integration_same_start.py`: scvi-tools {ref['scvi']}'s untrained SCVI weights (seed "
        f"{ref['seed']}) copied into cellvi's VAE; both trained {ref['epochs']} epochs ({n_steps} steps) by one "
        "plain loop over the same minibatch index arrays, each with its own library's module, loss, "
        "minibatch tensors and Adam, and the same `torch.manual_seed` before the loop. Relative "
        "difference of the per-step training loss = |cellvi - scvi-tools| / |scvi-tools|.",
        "",
        "| dropout | first step > 1e-6 | > 1e-4 | > 1e-2 | rel. diff. at step 1 / 10 / 100 / last | "
        "validation loss (cellvi / scvi-tools) | latent: max rel. diff., min dim corr. | "
        "scIB Total (cellvi / scvi-tools) | Bio (cellvi / scvi-tools) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, label in (
        ("dropout", "0.1 (default)"),
        ("no_dropout", "off"),
        ("scvi_one_ulp", "control, 0.1: scvi-tools vs scvi-tools with every initial weight 1 ulp up"),
    ):
        r = runs[name]
        f = r["first_step_rel_diff_over"]
        d = r["rel_diff_at_steps"]
        at = " / ".join(f"{d[s]:.1e}" for s in ("1", "10", "100", str(r["steps"])) if s in d)
        lines.append(
            f"| {label} | {f['1e-06'] or 'never'} | {f['0.0001'] or 'never'} | {f['0.01'] or 'never'} | {at} | "
            f"{r['validation_loss']['cellvi']:.3f} / {r['validation_loss']['scvi_tools']:.3f} | "
            f"{r['latent_max_rel_diff']:.1e}, {r['latent_dim_correlation']['min']:.4f} | "
            f"{r['scib']['cellvi']['Total']:.4f} / {r['scib']['scvi-tools']['Total']:.4f} | "
            f"{r['scib']['cellvi']['Bio conservation']:.4f} / {r['scib']['scvi-tools']['Bio conservation']:.4f} |"
        )
    lines += [
        "",
        "Validation loss: eval mode, kl_weight 1, on the held-out cells, with one draw of z each; the two draws "
        "are not the same noise (scvi-tools' latent call draws from the generator first), so it differs more "
        "than the training losses do.",
    ]
    lines += ["", "Per-step training loss, first 12 steps and every 100th (dropout on):", ""]
    lines += ["| step | cellvi | scvi-tools | rel. diff. |", "|---|---|---|---|"]
    r = runs["dropout"]
    for s in [*range(1, 13), *range(100, r["steps"] + 1, 100)]:
        c, t = r["loss_cellvi"][s - 1], r["loss_scvi_tools"][s - 1]
        lines.append(f"| {s} | {c:.6f} | {t:.6f} | {abs(c - t) / abs(t):.1e} |")
    md.write_text(text + "\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=["scvi", "cellvi"], required=True)
    p.add_argument("--out", required=True, help="the .pt file stage scvi writes and stage cellvi reads")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", default=str(HERE / "results"))
    a = p.parse_args(argv)
    (stage_scvi if a.stage == "scvi" else stage_cellvi)(a)


if __name__ == "__main__":
    main()
