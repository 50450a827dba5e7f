"""Out-of-core benchmark: cellvi from disk vs cellvi in memory vs scvi-tools 1.4.2 from a backed AnnData.

    python bench/out_of_core.py --n-cells 1000000 --n-genes 2000            # full run (quiet machine)
    python bench/out_of_core.py --n-cells 100000 --max-steps 40             # quick check
    python bench/out_of_core.py --n-cells 10000000 --modes cellvi-disk      # 10M cells, bounded memory

The data (``bench/data/ooc_<cells>x<genes>.h5ad``, CSR) are made once with
``cellvi.data.simulate(path=...)``, which writes chunk by chunk. Each mode runs in its own process
(peak RSS is per process): ``cellvi-disk`` (backed h5ad, :class:`cellvi.data.ondisk.OnDiskLoader`),
``cellvi-memory`` (the file read into memory) and ``scvi-backed`` (scvi-tools in bench/.venv-scvi on
the backed h5ad; ``scvi-memory`` also exists). Per mode: training cells/s over one epoch at batch size
1024 (or ``--max-steps`` minibatches: training on a random subset of ``steps * batch`` cells, no
validation), inference cells/s of ``get_latent_representation`` on all cells (the median of
``--latent-passes`` passes, default 3: single passes of cellvi varied by +-20% here), and peak RSS. The
driver writes ``bench/results/out_of_core_<cells>.json`` and ``.md`` with the ratios the issue asks
for: disk >= 0.9x memory, disk >= 3x scvi-tools backed, peak RSS < 2 GB. Each cellvi mode runs
``--repeats`` times (default 3) and scvi-tools ``--scvi-repeats`` times (default 1), alternating; the
ratios are of medians. Before every run the file is read once into the page cache (when it fits in
half the free memory), so that a run right after another mode's does not get a warmer cache than the
first (its cached pages are dropped first, so that each run finds them cached alike). Timings taken
while other processes use the CPU (``other_cpu_frac``) are contended and must be
rerun.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from out_of_core_report import summarise
from worker import peak_rss_mib

HERE = Path(__file__).resolve().parent
SCVI_PY = HERE / ".venv-scvi" / "bin" / "python"


def busy_cpu_s() -> tuple[float, float]:
    """(CPU seconds of all processes on the machine, of this process)."""
    ticks = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    own = resource.getrusage(resource.RUSAGE_SELF)
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK"), own.ru_utime + own.ru_stime


def worker(a) -> dict:
    lib = "scvi" if a.worker.startswith("scvi") else "cellvi"
    backed = a.worker.endswith(("disk", "backed"))
    import anndata as ad
    import torch

    torch.set_num_threads(a.threads)
    mod = __import__(lib)
    if lib == "scvi":
        import logging

        mod.settings.verbosity = logging.WARNING
        mod.settings.num_threads = a.threads
    else:
        mod.settings.progress_bar = False
    mod.settings.seed = 0
    t = time.perf_counter()
    adata = ad.read_h5ad(a.data, backed="r" if backed else None)
    read_s = time.perf_counter() - t
    t = time.perf_counter()
    mod.model.SCVI.setup_anndata(adata, batch_key="batch")
    setup_s = time.perf_counter() - t
    model = mod.model.SCVI(adata, n_hidden=128, n_latent=10, n_layers=1, gene_likelihood="zinb")
    n = adata.n_obs
    n_train = n if a.max_steps is None else min(n, a.max_steps * a.batch_size)
    kw = dict(max_epochs=1, batch_size=a.batch_size, train_size=n_train / n, enable_progress_bar=False)
    if lib == "scvi":
        kw.update(validation_size=0.0, early_stopping=False)
    else:
        kw.update(validation_size=0.0)
        if a.fused_kernels != "auto":  # auto: cellvi compiles runs of >= 1M cell-epochs (one epoch at 1M)
            kw.update(fused_kernels=a.fused_kernels == "on")
    steps = _log_steps() if lib == "cellvi" else None
    t, (all0, own0) = time.perf_counter(), busy_cpu_s()
    model.train(**kw)
    train_s, (all1, own1) = time.perf_counter() - t, busy_cpu_s()
    step_stats = _step_stats(steps, t, train_s, a.warm_steps) if steps else {}
    step_stats["train_cells_per_cpu_s"] = n_train / (own1 - own0)
    other = max(0.0, (all1 - all0) - (own1 - own0)) / (train_s * (os.cpu_count() or 1))
    rss_train = peak_rss_mib()
    n_inf = n if a.max_steps is None else min(n, a.max_steps * a.batch_size * 4)
    idx = None if n_inf == n else list(range(n_inf))  # a prefix: contiguous on disk
    latent_s = []
    for _ in range(a.latent_passes):  # passes take the same model and cells; their median is reported
        t = time.perf_counter()
        z = model.get_latent_representation(adata, indices=idx, batch_size=a.batch_size)
        latent_s.append(time.perf_counter() - t)
    out = dict(
        mode=a.worker,
        lib=lib,
        version=getattr(mod, "__version__", "?"),
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        n_cells=n,
        n_genes=int(adata.n_vars),
        batch_size=a.batch_size,
        read_s=read_s,
        setup_s=setup_s,
        n_train_cells=n_train,
        train_s=train_s,
        train_cells_per_s=n_train / train_s,
        **step_stats,
        other_cpu_frac=other,
        load_avg_before=a.load_before,
        peak_rss_train_mib=rss_train,
        n_latent_cells=n_inf,
        latent_pass_s=latent_s,
    )
    if latent_s:  # --latent-passes 0: training only
        out.update(latent_s=float(np.median(latent_s)), latent_cells_per_s=n_inf / float(np.median(latent_s)))
    if lib == "cellvi" and backed and latent_s:
        del z
        t = time.perf_counter()
        target = Path(a.data).with_suffix(".latent.h5ad")
        model.write_latent(target, indices=idx, batch_size=a.batch_size, overwrite=True)
        out["write_latent_cells_per_s"] = n_inf / (time.perf_counter() - t)
        target.unlink()
    out["peak_rss_mib"] = peak_rss_mib()
    return out


def _log_steps() -> list:
    """Record (start, end, cells) of every training step (forward and backward) of cellvi's trainer.
    The time between one step's end and the next one's start is the optimizer step plus the loader's
    work for the next minibatch (gathering, densifying; reading from disk unless read ahead)."""
    from cellvi.train.trainer import Trainer

    log: list = []
    inner = Trainer._forward_backward

    def timed(self, batch, kl_w):
        t0, cpu0 = time.perf_counter(), time.process_time()
        out = inner(self, batch, kl_w)
        log.append((t0, time.perf_counter(), len(batch["batch"]), cpu0))
        return out

    Trainer._forward_backward = timed
    return log


def _step_stats(log: list, t_start: float, train_s: float, warm: int) -> dict:
    """Whole-train() time split into the start (up to the first step), the first ``warm`` steps
    (compilation: the first compiled step compiles, ~6-15 s) and the steady state after them; the
    steady cells/s is over the steps after the first ``warm`` (to the start of the last step), and
    their time is split into forward+backward and the rest (optimizer step and loader)."""
    t0, t1, n, cpu = (np.array(x) for x in zip(*log))
    warm = min(warm, len(log) // 2)
    steady_s = t0[-1] - t0[warm]
    steady_cells = int(n[warm:-1].sum())
    compute = float((t1[warm:-1] - t0[warm:-1]).sum())
    return dict(
        n_steps=len(log),
        warm_steps=warm,
        start_s=float(t0[0] - t_start),
        first_step_s=float(t1[0] - t0[0]),
        warm_s=float(t0[warm] - t0[0]),
        steady_cells_per_s=steady_cells / steady_s,
        # CPU seconds of the whole process (all its threads: torch's and a read-ahead thread's): what
        # other processes on a shared machine take shows in the wall time, much less in these
        steady_cells_per_cpu_s=steady_cells / (cpu[-1] - cpu[warm]),
        steady_forward_backward_frac=compute / steady_s,
        steady_between_steps_ms=1000 * (steady_s - compute) / max(1, len(log) - warm - 1),
        steady_step_ms=1000 * steady_s / max(1, len(log) - warm - 1),
        end_s=float(t_start + train_s - t0[-1]),
    )


def driver(a) -> None:
    data = Path(a.data or HERE / "data" / f"ooc_{a.n_cells}x{a.n_genes}.h5ad")
    if not data.exists():
        import cellvi

        data.parent.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        cellvi.data.simulate(a.n_cells, a.n_genes, n_batches=3, n_cell_types=5, seed=0, path=data)
        print(f"wrote {data} ({data.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - t:.0f} s")
    modes = a.modes.split(",")
    warmable = _fits_page_cache(data)
    warmup = None
    if a.warmup and a.compile_cache == "shared" and a.fused_kernels != "off" and "cellvi-disk" in modes:
        # an untimed compiled run first: no run of the series compiles from scratch (the first one did, and
        # measured 3.6x a cached compilation here), whichever mode comes first
        t = time.perf_counter()
        _run_worker(a, "cellvi-disk", data, ["--max-steps", "3", "--latent-passes", "0", "--fused-kernels", "on"])
        warmup = time.perf_counter() - t
        print(f"warm-up (compile cache filled): {warmup:.0f} s", flush=True)
    rows = []
    for rep in range(max(a.repeats, a.scvi_repeats)):  # modes alternate, so drifts hit each alike
        # abba: every other round in reverse (A B B A A B): a steady drift of the machine's load then
        # favours neither mode, where A B A B gives B the later, and under a falling load the quieter, slot
        for mode in modes if a.order == "alternate" or rep % 2 == 0 else modes[::-1]:
            if rep >= (a.scvi_repeats if mode.startswith("scvi") else a.repeats):
                continue
            cache = _set_page_cache(data, a.page_cache if warmable else "partly")
            rows.append(_run_worker(a, mode, data))
            r = rows[-1]
            r.update(run=len(rows), page_cache=cache, compile_cache=a.compile_cache)
            steady = f"steady {r['steady_cells_per_s']:8.0f} " if "steady_cells_per_s" in r else ""
            print(
                f"{r['run']:2d} {mode:14s} train {r['train_cells_per_s']:8.0f} {steady}cells/s  latent "
                f"{r.get('latent_cells_per_s', float('nan')):8.0f} cells/s  peak RSS {r['peak_rss_mib']:6.0f} MiB  "
                f"other CPU {r['other_cpu_frac']:.2f}",
                flush=True,
            )
    meta = {
        "command": "python bench/out_of_core.py " + " ".join(a.argv),
        "max_steps": a.max_steps,
        "threads": a.threads,
        "page_cache": a.page_cache if warmable else "partly",
        "page_cache_warmed": warmable and a.page_cache == "warm",
        "compile_cache": a.compile_cache,
        "fused_kernels": a.fused_kernels,
        "order": a.order,
        "warmup_s": warmup,
        "warm_steps": a.warm_steps,
        "file_gib": data.stat().st_size / 2**30,
        "machine": f"{os.cpu_count()} CPUs, {_mem_gib():.0f} GiB, shared with other jobs",
    }
    summarise(a, modes, rows, meta)


def _run_worker(a, mode: str, data: Path, extra: list | None = None) -> dict:
    py = str(SCVI_PY) if mode.startswith("scvi") else sys.executable
    cmd = [
        py,
        __file__,
        "--worker",
        mode,
        "--data",
        str(data),
        "--batch-size",
        str(a.batch_size),
        "--threads",
        str(a.threads),
        "--latent-passes",
        str(a.latent_passes),
        "--warm-steps",
        str(a.warm_steps),
        "--load-before",
        str(os.getloadavg()[0]),
    ]
    cmd += ["--max-steps", str(a.max_steps)] if a.max_steps else []
    cmd += ["--fused-kernels", a.fused_kernels] + (extra or [])  # argparse: the last of a repeated flag wins
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as tmp:
        if a.compile_cache != "shared":  # fresh: this run's own empty cache; series: the driver's
            env["TORCHINDUCTOR_CACHE_DIR"] = tmp if a.compile_cache == "fresh" else a.series_cache
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode:
        print(res.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"{mode} failed")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _mem_gib() -> float:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30


def _fits_page_cache(path: Path) -> bool:
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return path.stat().st_size <= available / 2


def _set_page_cache(path: Path, state: str) -> str:
    """Put ``path``'s pages in the page cache state ``state``: "warm" (dropped, then read once:
    :func:`_warm_page_cache`), "cold" (dropped: the run reads from the device) or "partly" (left
    alone). Returns ``state``."""
    if state == "warm":
        _warm_page_cache(path)
    elif state == "cold":
        with open(path, "rb", buffering=0) as f:
            os.fsync(f.fileno())
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    return state


def _warm_page_cache(path: Path) -> bool:
    """Drop ``path``'s pages from the page cache and read it once (64 MiB at a time), so that every run
    finds the file cached alike, as a first read from disk leaves it: runs compare loaders, not a cold
    disk against a warm one, nor pages cached by the writer (reading them back was ~25% slower here
    than pages cached by a read, which the kernel keeps in larger folios). Skipped (False) for a file
    larger than half the available memory."""
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if path.stat().st_size > available / 2:
        return False
    with open(path, "rb", buffering=0) as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        while f.read(64 * 2**20):
            pass
    return True


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-cells", type=int, default=1_000_000)
    p.add_argument("--n-genes", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--max-steps", type=int, default=None, help="train this many minibatches, not an epoch")
    p.add_argument("--modes", default="cellvi-disk,cellvi-memory,scvi-backed")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--latent-passes", type=int, default=3, help="latent passes per run (median reported)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each cellvi mode (medians reported)")
    p.add_argument("--scvi-repeats", type=int, default=1, help="runs of each scvi-tools mode (~5 min each at 1M)")
    p.add_argument("--data", default=None, help="h5ad to use (default: made under bench/data)")
    p.add_argument("--page-cache", choices=["warm", "cold"], default="warm", help="the file's pages before each run")
    p.add_argument(
        "--compile-cache",
        choices=["shared", "fresh", "series"],
        default="shared",
        help="torch's compile cache: the user's (shared), an empty one per run (fresh), or one empty at the "
        "start of this series and shared by its runs (series: the first run compiles from scratch)",
    )
    p.add_argument(
        "--fused-kernels", choices=["auto", "on", "off"], default="auto", help="cellvi's train(fused_kernels)"
    )
    p.add_argument("--no-warmup", dest="warmup", action="store_false", help="no untimed compiled run before the series")
    p.add_argument("--warm-steps", type=int, default=50, help="steps left out of the steady-state cells/s")
    p.add_argument("--order", choices=["alternate", "abba"], default="abba", help="the modes' order per round")
    p.add_argument("--also", nargs="*", default=[], help="results JSONs of other series to summarise with this one")
    p.add_argument("--notes", default=None, help="a markdown file appended to the results as their reading")
    p.add_argument("--from-json", default=None, help="no runs: summarise the runs of this results JSON again")
    p.add_argument("--name", default=None, help="results file name (default out_of_core_<cells>)")
    p.add_argument("--load-before", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.argv = list(sys.argv[1:] if argv is None else argv)
    if a.worker:
        print(json.dumps(worker(a)))
        return
    if a.from_json:  # rewrite the results of an earlier series (with --also / --notes)
        old = json.loads(Path(a.from_json).read_text())
        first = old["runs"][0]
        a.n_cells, a.n_genes, a.batch_size = first["n_cells"], first["n_genes"], first["batch_size"]
        a.threads, a.max_steps, a.warm_steps = old["threads"], old["max_steps"], old["warm_steps"]
        meta = {k: v for k, v in old.items() if k not in ("runs", "medians", "ratios", "other_series")}
        return summarise(a, list(old["medians"]), old["runs"], meta)
    with tempfile.TemporaryDirectory() as series_cache:
        a.series_cache = series_cache
        driver(a)


if __name__ == "__main__":
    main()
