"""The encoder's sparse first layer at inference: ``embedding_bag`` (what cellvi uses) against PyTorch's
sparse-times-dense product ``torch.addmm`` (what it used before), on the same model and data.

    .venv/bin/python bench/sparse_first_layer.py                 # mouse_10x_10k + 100,000 simulated cells

Both run in one process, alternating (``--repeats`` times each), on one untrained SCVI model (speed
does not depend on the weights); the figure is the median time of ``get_latent_representation`` over
all cells at batch 1024, 2 torch threads. Also reported: the largest difference between the two
latents (float32 sums in another order). Results: ``bench/results/sparse_first_layer.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

import cellvi
from cellvi.nn import layers

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("CELLVI_DATA_DIR", HERE.parent.parent / "shared" / "data"))


def addmm_linear(x: torch.Tensor, linear: torch.nn.Linear) -> torch.Tensor:
    """The previous implementation: PyTorch's sparse CSR times the dense transposed weight."""
    return torch.addmm(linear.bias, x, layers._transposed_weight(linear))


def measure(adata, repeats: int) -> dict:
    cellvi.model.SCVI.setup_anndata(adata, batch_key="batch" if "batch" in adata.obs else None)
    model = cellvi.model.SCVI(adata, n_hidden=128, n_latent=10, n_layers=1, gene_likelihood="zinb")
    kinds = {"embedding_bag": layers._sparse_linear, "addmm": addmm_linear}
    times: dict[str, list[float]] = {k: [] for k in kinds}
    latents = {}
    try:
        for _ in range(repeats + 1):  # the first round warms up and is not counted
            for name, fn in kinds.items():
                layers._sparse_linear = fn
                t = time.perf_counter()
                latents[name] = model.get_latent_representation(batch_size=1024, obsm_key=None)
                times[name].append(time.perf_counter() - t)
    finally:
        layers._sparse_linear = kinds["embedding_bag"]
    med = {k: float(np.median(v[1:])) for k, v in times.items()}
    return {
        "cells": adata.n_obs,
        "genes": adata.n_vars,
        "seconds": {k: v[1:] for k, v in times.items()},
        "median_s": med,
        "speedup": med["addmm"] / med["embedding_bag"],
        "max_abs_latent_diff": float(np.abs(latents["addmm"] - latents["embedding_bag"]).max()),
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--sim-cells", type=int, default=100_000)
    p.add_argument("--out", default=str(HERE / "results" / "sparse_first_layer"))
    a = p.parse_args(argv)
    torch.set_num_threads(2)
    cellvi.settings.progress_bar = False
    import anndata as ad

    sets = {}
    if (DATA / "mouse_10x_10k.h5ad").exists():
        sets["mouse_10x_10k"] = ad.read_h5ad(DATA / "mouse_10x_10k.h5ad")
    sets[f"sim{a.sim_cells // 1000}k"] = cellvi.data.simulate(a.sim_cells, 2000, n_batches=3, n_cell_types=5, seed=0)
    rows = {}
    for name, adata in sets.items():
        rows[name] = measure(adata, a.repeats)
        r = rows[name]
        print(
            f"{name}: embedding_bag {r['median_s']['embedding_bag']:.3f} s, addmm {r['median_s']['addmm']:.3f} s, "
            f"{r['speedup']:.2f}x, max latent difference {r['max_abs_latent_diff']:.1e}",
            flush=True,
        )
    meta = {
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": 2,
        "repeats": a.repeats,
    }
    try:
        meta["cpu"] = next(
            line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    out = Path(a.out)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": rows}, indent=1))
    lines = [
        "# Sparse first layer at inference: embedding_bag vs torch.addmm",
        "",
        f"{meta['cpu']}, torch {meta['torch']}, 2 threads; latent of all cells at batch 1024, "
        f"median of {a.repeats} alternating runs each, one process.",
        "",
        "| data | cells x genes | embedding_bag s | addmm s | speed-up | max latent difference |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {k} | {r['cells']} x {r['genes']} | {r['median_s']['embedding_bag']:.3f} | {r['median_s']['addmm']:.3f} | "
        f"{r['speedup']:.2f}x | {r['max_abs_latent_diff']:.1e} |"
        for k, r in rows.items()
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
