"""One training run's held-out ELBO against wall time, for scvi-tools or cellvi (time to quality).

Runs under either environment (as ``bench/worker.py``, whose data split it reuses: a fixed-seed 10% of
cells is removed before training and used only here). After every ``--every``-th epoch the held-out ELBO
(mean per cell, higher is better) is evaluated with the module in eval mode and a fixed random seed on a
side stream, so training's own draws are untouched; the time spent evaluating is subtracted from the
clock. Writes JSON: ``curve`` = [[epoch (1-based), train wall seconds, held-out ELBO, train CPU seconds
of this process], ...]; with one thread the CPU seconds are the wall time a quiet machine would take::

    bench/.venv-scvi/bin/python bench/ttq_worker.py --lib scvi --data D.h5ad --out scvi.json
    .venv/bin/python bench/ttq_worker.py --lib cellvi --data D.h5ad --out c.json \
        --train-kwargs '{"batch_size": 512}' --plan-kwargs '{"lr": 0.004}' --until-elbo -880.1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from worker import busy_cpu_s, import_lib, peak_rss_mib, split  # noqa: E402


def own_cpu_s() -> float:
    """CPU seconds of this process and of its children that have ended (torch.compile's C++ compiler
    runs as a child process: its time is part of the cost of compiling)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lib", choices=["scvi", "cellvi"], required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--batch-key", default="batch", help="obs column of batches ('' for none)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0, help="training seed (settings.seed)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the held-out cells (same for all runs)")
    p.add_argument("--heldout-frac", type=float, default=0.1)
    p.add_argument("--every", type=int, default=1, help="evaluate the held-out ELBO every this many epochs")
    p.add_argument("--train-kwargs", default="{}", help="JSON: extra train() keywords (max_epochs, batch_size...)")
    p.add_argument("--plan-kwargs", default="{}", help="JSON: train(plan_kwargs=...)")
    p.add_argument("--until-elbo", type=float, help="stop once the held-out ELBO reaches this")
    p.add_argument("--max-train-s", type=float, help="stop after this many training seconds")
    p.add_argument("--max-cpu-s", type=float, help="stop after this many training CPU seconds")
    a = p.parse_args(argv)

    lib, import_s = import_lib(a.lib)
    import anndata as ad
    import torch

    torch.set_num_threads(a.threads)
    if a.lib == "scvi":
        import logging

        lib.settings.verbosity = logging.WARNING
        lib.settings.num_threads = a.threads
    adata = ad.read_h5ad(a.data)
    train_idx, held_idx = split(adata.n_obs, a.heldout_frac, a.split_seed)
    adata_train, adata_held = adata[train_idx].copy(), adata[held_idx].copy()
    lib.settings.seed = a.seed
    lib.model.SCVI.setup_anndata(adata_train, batch_key=a.batch_key or None)
    model = lib.model.SCVI(adata_train)
    train_kwargs = json.loads(a.train_kwargs)
    plan_kwargs = json.loads(a.plan_kwargs)

    curve: list[list[float]] = []
    eval_s, eval_cpu_s = [0.0], [0.0]
    t0, cpu0 = [0.0], [0.0]

    def on_epoch_end(epoch: int, last: bool = False) -> bool:
        """Record the held-out ELBO after epoch ``epoch`` (0-based; always after the first and the
        ``last``, so that the final ELBO is the trained model's); True asks to stop."""
        now = time.perf_counter() - t0[0] - eval_s[0]
        cpu_now = own_cpu_s() - cpu0[0] - eval_cpu_s[0]
        t, c = time.perf_counter(), own_cpu_s()
        stop = False
        if (epoch + 1) % a.every == 0 or epoch == 0 or last:
            module = model.module
            was_training = module.training
            module.eval()
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(a.seed)
                elbo = float(model.get_elbo(adata_held))
            module.train(was_training)
            curve.append([epoch + 1, now, elbo, cpu_now])
            Path(a.out + ".partial").write_text(json.dumps(curve))  # a run cut short still leaves its curve
            stop = a.until_elbo is not None and elbo >= a.until_elbo
        stop = stop or (a.max_train_s is not None and now >= a.max_train_s)
        stop = stop or (a.max_cpu_s is not None and cpu_now >= a.max_cpu_s)
        eval_s[0] += time.perf_counter() - t
        eval_cpu_s[0] += own_cpu_s() - c
        return stop

    all0, own0 = busy_cpu_s()
    if a.lib == "cellvi":
        t0[0], cpu0[0] = time.perf_counter(), own_cpu_s()
        model.train(
            enable_progress_bar=False,
            plan_kwargs=plan_kwargs or None,
            callbacks=[lambda epoch, row: on_epoch_end(epoch)],
            **train_kwargs,
        )
    else:
        from lightning.pytorch import Callback

        class Clock(Callback):
            def on_train_epoch_end(self, trainer, pl_module):
                if on_epoch_end(trainer.current_epoch, last=trainer.current_epoch + 1 >= trainer.max_epochs):
                    trainer.should_stop = True

        t0[0], cpu0[0] = time.perf_counter(), own_cpu_s()
        model.train(
            enable_progress_bar=False,
            early_stopping=train_kwargs.pop("early_stopping", False),
            plan_kwargs=plan_kwargs or None,
            callbacks=[Clock()],
            **train_kwargs,
        )
    wall = time.perf_counter() - t0[0]
    all1, own1 = busy_cpu_s()
    train_s = wall - eval_s[0]
    result = dict(
        lib=a.lib,
        version=getattr(lib, "__version__", "?"),
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        data=a.data,
        n_cells=int(adata.n_obs),
        n_genes=int(adata.n_vars),
        n_train_cells=int(adata_train.n_obs),
        n_heldout_cells=int(adata_held.n_obs),
        seed=a.seed,
        train_kwargs=json.loads(a.train_kwargs),
        plan_kwargs=plan_kwargs,
        until_elbo=a.until_elbo,
        import_s=import_s,
        train_s=train_s,
        eval_s=eval_s[0],
        train_cpu_s=(own_cpu_s() - cpu0[0]) - eval_cpu_s[0],
        other_procs_cpu_frac=max(0.0, (all1 - all0) - (own1 - own0) - 0.0) / (wall * (os.cpu_count() or 1)),
        curve=curve,
        final_heldout_elbo=curve[-1][2] if curve else None,
        peak_rss_mib=peak_rss_mib(),
    )
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(f"{a.lib} train_s={train_s:.1f} epochs={curve[-1][0] if curve else 0} elbo={result['final_heldout_elbo']}")


if __name__ == "__main__":
    main()
