"""Time one library (scvi-tools or cellvi) on one .h5ad and write the figures as JSON.

Runs unchanged under either environment; the two are compared by running it twice:

    bench/.venv-scvi/bin/python bench/worker.py --lib scvi   --data D.h5ad --epochs 10 --out scvi.json
    .venv/bin/python            bench/worker.py --lib cellvi --data D.h5ad --epochs 10 --out cellvi.json

A fixed-seed fraction of cells (--heldout-frac) is removed before training and only
used for the held-out ELBO. Figures: import time, seconds per epoch (median of the
epoch-to-epoch gaps after the first epoch), training cells/s, wall time of
get_latent_representation / get_normalized_expression on all cells, peak RSS, and the
held-out ELBO as mean per cell with higher = better for both libraries
(scvi-tools 1.4.2 get_elbo already returns +ELBO, see _elbo_per_cell).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import resource
import sys
import time

import numpy as np

THREADS = 2
TRAIN_SIZE = 0.9
SAME = dict(n_hidden=128, n_latent=10, n_layers=1, gene_likelihood="zinb")


def rss_mib():
    """Current resident set size of this process in MiB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mib():
    """Peak resident set size of this process so far in MiB: VmHWM from /proc where there is one.

    Not ru_maxrss on Linux: it is handed down through fork and exec, so a worker started by a driver
    that once held 3 GB reports at least 3 GB (the 100k integration run of 2026-12-01 reported 2,949 MiB
    where the worker itself peaked below 1 GB). ru_maxrss (KiB on Linux) is the fallback elsewhere."""
    try:
        with open("/proc/self/status") as f:
            return next(int(ln.split()[1]) / 1024 for ln in f if ln.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def own_cpu_s():
    """CPU seconds this process (all its threads) has used so far: less sensitive than wall time to other
    processes taking turns on the cores (the time they take is not counted)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def busy_cpu_s():
    """(CPU seconds used by all processes on the machine, by this process) so far.

    Their difference over the training loop is CPU that other processes took: on a
    2-core machine any of it means the timings are contended (torch's OpenMP threads
    then stall, and epochs can run ~10x slower), so such results must be re-run.
    """
    ticks = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    busy = sum(ticks) - ticks[3] - ticks[4]  # minus idle and iowait
    own = resource.getrusage(resource.RUSAGE_SELF)
    return busy / os.sysconf("SC_CLK_TCK"), own.ru_utime + own.ru_stime


def import_lib(name):
    """Import scvi or cellvi (same API) and return (module, seconds) including torch."""
    t = time.perf_counter()
    lib = importlib.import_module(name)
    return lib, time.perf_counter() - t


def split(n, frac, seed):
    """Fixed-seed (train indices, held-out indices), both sorted."""
    perm = np.random.default_rng(seed).permutation(n)
    n_held = int(round(frac * n))
    return np.sort(perm[n_held:]), np.sort(perm[:n_held])


def train(
    lib_name,
    model,
    epochs,
    batch_size,
    fused="auto",
    until_elbo=None,
    adata_held=None,
    seed=0,
    sparse_first="auto",
    cpu_ends=None,
    precision="32-true",
):
    """Train and return the wall seconds since train start at the end of each epoch (and append this
    process's CPU seconds at each epoch's end to ``cpu_ends``).

    cellvi only: ``fused`` sets ``fused_kernels`` (auto/on/off); ``until_elbo`` stops training as soon as
    the held-out ELBO reaches that value, and the time spent evaluating it is not counted. That ELBO is
    evaluated with the random draws of the final evaluation (torch seeded with ``seed``, on a side
    stream that leaves training's own untouched), so the stopping test and the reported ELBO agree.
    """
    kw = dict(max_epochs=epochs, batch_size=batch_size, train_size=TRAIN_SIZE, enable_progress_bar=False)
    if precision != "32-true":  # Lightning's name, which both libraries take (older cellvi: float32 only)
        kw["precision"] = precision
    if lib_name == "cellvi":
        kw["fused_kernels"] = {"auto": None, "on": True, "off": False}[fused]
        if sparse_first != "auto":  # older cellvi versions have no such argument
            kw["sparse_first_layer"] = sparse_first == "on"
        eval_s = [0.0]
        ends = []
        t0 = time.perf_counter()

        def stop_at_target(epoch, row):
            ends.append(time.perf_counter() - t0 - eval_s[0])
            if cpu_ends is not None:
                cpu_ends.append(own_cpu_s())
            if until_elbo is None:
                return False
            t = time.perf_counter()
            import torch

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                reached = model.get_elbo(adata_held) >= until_elbo
            eval_s[0] += time.perf_counter() - t
            return reached

        model.train(callbacks=[stop_at_target], **kw)
        return ends
    from lightning.pytorch import Callback

    ends = []

    class EpochClock(Callback):
        """Record the time at the end of every training epoch."""

        def on_train_epoch_end(self, trainer, pl_module):
            ends.append(time.perf_counter() - t0)
            if cpu_ends is not None:
                cpu_ends.append(own_cpu_s())

    t0 = time.perf_counter()
    model.train(early_stopping=False, callbacks=[EpochClock()], **kw)
    return ends


def _elbo_per_cell(model, adata):
    """Held-out ELBO, mean per cell, higher is better.

    scvi-tools 1.4.2: get_elbo returns -(reconstruction_loss + kl_local).mean(), i.e. the
    ELBO itself (a 0-d tensor, negative for counts). cellvi documents the same convention.
    """
    return float(model.get_elbo(adata))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lib", choices=["scvi", "cellvi"], required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--config", choices=["same", "defaults"], default="same")
    p.add_argument("--heldout-frac", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--batch-key", default="batch", help="obs column of batches ('' for none)")
    p.add_argument("--fused", choices=["auto", "on", "off"], default="auto", help="cellvi fused_kernels")
    p.add_argument("--until-elbo", type=float, help="cellvi: stop when the held-out ELBO reaches this")
    p.add_argument("--sparse-first-layer", choices=["auto", "on", "off"], default="auto", help="cellvi only")
    p.add_argument("--precision", choices=["32-true", "bf16-mixed"], default="32-true", help="train(precision=...)")
    p.add_argument(
        "--skip-inference",
        action="store_true",
        help="no latent / normalised expression timing (wide data: a cells x genes result would not fit)",
    )
    a = p.parse_args(argv)

    scvi, import_s = import_lib(a.lib)
    import anndata as ad
    import torch

    torch.set_num_threads(THREADS)
    if a.lib == "scvi":
        import logging

        scvi.settings.verbosity = logging.WARNING
        scvi.settings.num_threads = THREADS
    rss_import = rss_mib()

    adata = ad.read_h5ad(a.data)
    train_idx, held_idx = split(adata.n_obs, a.heldout_frac, a.seed)
    adata_train, adata_held = adata[train_idx].copy(), adata[held_idx].copy()

    scvi.settings.seed = a.seed
    scvi.model.SCVI.setup_anndata(adata_train, batch_key=a.batch_key or None)
    model = scvi.model.SCVI(adata_train, **(SAME if a.config == "same" else {}))
    rss_before_train = rss_mib()

    cpu_ends: list[float] = []
    t, (all0, own0) = time.perf_counter(), busy_cpu_s()
    ends = train(
        a.lib,
        model,
        a.epochs,
        a.batch_size,
        a.fused,
        a.until_elbo,
        adata_held,
        a.seed,
        a.sparse_first_layer,
        cpu_ends,
        a.precision,
    )
    train_s, (all1, own1) = time.perf_counter() - t, busy_cpu_s()
    other_cpu = max(0.0, (all1 - all0) - (own1 - own0))
    gaps = np.diff([0.0] + ends)
    epoch_s = float(np.median(gaps[1:] if len(gaps) > 1 else gaps))
    cpu_gaps = np.diff([own0] + cpu_ends)
    epoch_cpu_s = float(np.median(cpu_gaps[1:] if len(cpu_gaps) > 1 else cpu_gaps))

    latent_s = normexpr_s = float("nan")
    latent = np.zeros((0, 0))
    if not a.skip_inference:
        t = time.perf_counter()
        latent = model.get_latent_representation(adata)
        latent_s = time.perf_counter() - t
        t = time.perf_counter()
        norm = model.get_normalized_expression(adata)
        normexpr_s = time.perf_counter() - t
        del norm

    scvi.settings.seed = a.seed
    t = time.perf_counter()
    elbo = _elbo_per_cell(model, adata_held)
    elbo_s = time.perf_counter() - t

    result = dict(
        lib=a.lib,
        version=getattr(scvi, "__version__", "?"),
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        python=platform.python_version(),
        data=a.data,
        n_cells=int(adata.n_obs),
        n_genes=int(adata.n_vars),
        n_train_cells=int(adata_train.n_obs),
        n_heldout_cells=int(adata_held.n_obs),
        config=a.config,
        fused=a.fused if a.lib == "cellvi" else None,
        precision=a.precision,
        sparse_first_layer=a.sparse_first_layer if a.lib == "cellvi" else None,
        until_elbo=a.until_elbo,
        epochs=a.epochs,
        epochs_run=len(ends),
        batch_size=a.batch_size,
        seed=a.seed,
        import_s=import_s,
        epoch_s=epoch_s,
        epoch_s_all=[float(g) for g in gaps],
        epoch_cpu_s=epoch_cpu_s,
        epoch_cpu_s_all=[float(g) for g in cpu_gaps],
        train_s=train_s,
        train_cpu_s=own1 - own0,
        other_procs_cpu_frac=other_cpu / (train_s * (os.cpu_count() or 1)),
        train_cells_per_s=adata_train.n_obs * TRAIN_SIZE / epoch_s,
        latent_s=latent_s,
        latent_shape=list(np.shape(latent)),
        normalized_expression_s=normexpr_s,
        heldout_elbo_per_cell=elbo,
        heldout_elbo_s=elbo_s,
        rss_after_import_mib=rss_import,
        rss_before_train_mib=rss_before_train,
        peak_rss_mib=peak_rss_mib(),
    )
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)
    keys = (
        "import_s",
        "epoch_s",
        "train_cells_per_s",
        "latent_s",
        "normalized_expression_s",
        "heldout_elbo_per_cell",
        "peak_rss_mib",
        "other_procs_cpu_frac",
    )
    print(" ".join(f"{k}={result[k]:.4g}" for k in keys), file=sys.stderr)
    if result["other_procs_cpu_frac"] > 0.05:
        print("WARNING: other processes used CPU during training; timings are contended", file=sys.stderr)


if __name__ == "__main__":
    main()
