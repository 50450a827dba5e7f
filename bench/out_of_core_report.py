"""The results of ``bench/out_of_core.py``: medians, disk / memory ratios (of medians, of runs paired
in order, at equal "other CPU"), and the JSON and markdown files with the other series and notes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def summarise(a, modes: list, rows: list, meta: dict) -> None:
    """Medians, ratios; writes the results JSON and markdown (with the ``--also`` series and ``--notes``)."""
    keys = ["train_cells_per_s", "steady_cells_per_s", "first_step_s", "latent_cells_per_s"]
    keys += ["train_cells_per_cpu_s", "steady_cells_per_cpu_s"]
    keys += ["peak_rss_train_mib", "peak_rss_mib", "other_cpu_frac"]
    by = {}
    for m in modes:
        mine = [r for r in rows if r["mode"] == m]
        by[m] = {k: float(np.median([r[k] for r in mine])) for k in keys if all(k in r for r in mine)}
    ratios = {}
    for key in (
        "train_cells_per_s",
        "steady_cells_per_s",
        "train_cells_per_cpu_s",
        "steady_cells_per_cpu_s",
        "latent_cells_per_s",
    ):
        if "cellvi-disk" in by and "cellvi-memory" in by and key in by["cellvi-disk"]:
            ratios[f"{key}_disk_vs_memory"] = by["cellvi-disk"][key] / by["cellvi-memory"][key]
            pairs = _paired(rows, key)
            if pairs:
                ratios[f"{key}_disk_vs_memory_paired_median"] = float(np.median(pairs))
        if "cellvi-disk" in by and "scvi-backed" in by and key in by["scvi-backed"]:
            ratios[f"{key}_disk_vs_scvi_backed"] = by["cellvi-disk"][key] / by["scvi-backed"][key]
    name = a.name or f"out_of_core_{a.n_cells}"
    out = HERE / "results" / name
    out.parent.mkdir(exist_ok=True)
    also = [json.loads(Path(f).read_text()) for f in a.also]
    for other in also:
        other.pop("other_series", None)
    same = [o for o in also if all(o.get(k) == meta.get(k) for k in ("max_steps", "threads", "compile_cache"))]
    pooled = rows + [r for o in same for r in o["runs"]]
    for key in ("steady_cells_per_s", "train_cells_per_s"):
        adjusted = _load_adjusted(pooled, key)
        if adjusted:
            ratios[f"{key}_disk_vs_memory_at_equal_other_cpu"] = adjusted[0]
            ratios[f"{key}_disk_vs_memory_at_equal_other_cpu_95ci_low"] = adjusted[1]
            ratios[f"{key}_disk_vs_memory_at_equal_other_cpu_95ci_high"] = adjusted[2]
    meta["load_adjusted_runs"] = len([r for r in pooled if r["mode"] in ("cellvi-disk", "cellvi-memory")])
    res = {"runs": rows, "medians": by, "ratios": ratios, **meta, "other_series": also}
    out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    text = _markdown(a, rows, by, ratios, meta) + "".join(_series_markdown(o) for o in also)
    if a.notes:
        text += "\n## Reading\n\n" + Path(a.notes).read_text()
    out.with_suffix(".md").write_text(text)
    print("\n".join(f"- {k}: {v:.2f}" for k, v in ratios.items()))


def _load_adjusted(rows: list, key: str) -> tuple | None:
    """disk / memory of ``key`` at equal "other CPU", with a 95% interval: least squares of
    log(key) on (1, other CPU, is disk) over the cellvi runs; None under 5 runs. On a shared machine the
    other processes' share moves both modes' speed alike (measured: -5.8 in log cells/s per unit of
    other CPU), so runs that happen to meet a quieter machine no longer decide the ratio."""
    runs = [r for r in rows if r["mode"] in ("cellvi-disk", "cellvi-memory") and key in r]
    if len(runs) < 5 or len({r["mode"] for r in runs}) < 2:
        return None
    y = np.log([r[key] for r in runs])
    X = np.column_stack(
        [np.ones(len(runs)), [r["other_cpu_frac"] for r in runs], [r["mode"] == "cellvi-disk" for r in runs]]
    )
    b = np.linalg.lstsq(X, y, rcond=None)[0]
    resid = y - X @ b
    se = float(np.sqrt(resid @ resid / (len(y) - 3) * np.linalg.inv(X.T @ X)[2, 2]))
    return float(np.exp(b[2])), float(np.exp(b[2] - 1.96 * se)), float(np.exp(b[2] + 1.96 * se))


def _paired(rows: list, key: str) -> list:
    """disk / memory ratios of ``key`` of the runs paired in order (the i-th disk run with the i-th
    memory run, which ran next to it): each pair shares the machine's state of its time."""
    disk = [r[key] for r in rows if r["mode"] == "cellvi-disk" and key in r]
    mem = [r[key] for r in rows if r["mode"] == "cellvi-memory" and key in r]
    return [d / m for d, m in zip(disk, mem)]


def _markdown(a, rows: list, by: dict, ratios: dict, meta: dict) -> str:
    cache = {
        "warm": "dropped from the page cache and read once into it before every run (the comparison is of "
        "the loaders, not of the disk)",
        "cold": "dropped from the page cache before every run (each run reads it from the storage device)",
        "partly": "larger than half the memory: not warmed (partly cached)",
    }[meta["page_cache"]]
    n_runs = {m: sum(r["mode"] == m for r in rows) for m in by}
    lines = [
        f"# Out-of-core: {a.n_cells} cells x {a.n_genes} genes, batch {a.batch_size}, "
        f"{'one epoch' if a.max_steps is None else f'{a.max_steps} steps'}",
        "",
        f"Command: `{meta['command']}`. Machine: {meta['machine']}; {a.threads} torch thread(s) in every run.",
        f"File {meta['file_gib']:.2f} GiB, {cache}. Compilation cache: {meta['compile_cache']} "
        + (
            {
                "fresh": "(each run compiles from scratch).",
                "series": "(empty at the start of the series: its first run compiles from scratch, the others "
                "find the compiled code cached).",
                "shared": "(torch's on-disk cache, as users have it; the first run of a series may fill it).",
            }[meta["compile_cache"]]
        )
        + f" fused_kernels: {meta['fused_kernels']} (auto compiles runs of >= 1M cell-epochs)."
        + (
            f" An untimed compiled run ({meta['warmup_s']:.0f} s) filled the compile cache before the series."
            if meta.get("warmup_s")
            else ""
        ),
        f"Each run is its own process; the modes' order: {meta.get('order', 'alternate')} (runs below). "
        '"whole train()": cells over '
        'the seconds of `train()`, compilation and loader start included; "steady": cells/s over the steps '
        f'after the first {a.warm_steps} (compilation is in the first steps). "other CPU": the share of the '
        "machine's CPU other processes took during `train()`.",
        "",
        "| mode | runs | whole train() cells/s | steady cells/s | steady cells per CPU-second | first step s | "
        "latent cells/s | peak RSS while training MiB | peak RSS MiB | other CPU |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    f = lambda v, d, fmt="{:.0f}": fmt.format(v[d]) if d in v else "n/a"  # noqa: E731
    lines += [
        f"| {m} | {n_runs[m]} | {f(v, 'train_cells_per_s')} | {f(v, 'steady_cells_per_s')} | "
        f"{f(v, 'steady_cells_per_cpu_s')} | {f(v, 'first_step_s', '{:.1f}')} | {f(v, 'latent_cells_per_s')} | {f(v, 'peak_rss_train_mib')} | "
        f"{f(v, 'peak_rss_mib')} | {f(v, 'other_cpu_frac', '{:.2f}')} |"
        for m, v in by.items()
    ]
    lines += [
        "",
        "Ratios of medians, the median of the ratios of runs paired in order, and the ratio at equal "
        f'"other CPU" (least squares of log cells/s on other CPU and mode over {meta.get("load_adjusted_runs")} '
        "runs of this configuration: this series and the others below of the same steps, threads and compile "
        "cache):",
        "",
    ]
    lines += [f"- {k}: {v:.2f}" for k, v in ratios.items()]
    lines += [
        "",
        "| run | mode | whole train() cells/s | steady cells/s | steady cells per CPU-s | start s | first step s | "
        "first steps s | step ms (between steps ms) | latent cells/s (median; each pass) | peak RSS MiB | "
        "other CPU | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        st = "steady_cells_per_s" in r
        lines.append(
            f"| {r['run']} | {r['mode']} | {r['train_cells_per_s']:.0f} | "
            + (
                f"{r['steady_cells_per_s']:.0f} | {_fmt(r, 'steady_cells_per_cpu_s')} | "
                f"{r['start_s']:.1f} | {r['first_step_s']:.1f} | {r['warm_s']:.1f} | "
                f"{r['steady_step_ms']:.0f} ({r['steady_between_steps_ms']:.0f}) | "
                if st
                else "n/a | | | | | | "
            )
            + (
                f"{r['latent_cells_per_s']:.0f} ("
                + ", ".join(f"{r['n_latent_cells'] / s:.0f}" for s in r["latent_pass_s"])
                + ")"
                if r["latent_pass_s"]
                else "n/a"
            )
            + f" | {r['peak_rss_mib']:.0f} | {r['other_cpu_frac']:.2f} | {r.get('load_avg_before', 0):.1f} |"
        )
    return "\n".join(lines) + "\n"


def _fmt(r: dict, key: str, fmt: str = "{:.0f}") -> str:
    return fmt.format(r[key]) if key in r else "n/a"


def _series_markdown(o: dict) -> str:
    """A shorter table of another series (``--also``: a results JSON of this script), with its command."""
    lines = [
        "",
        f"### Series `{o['command']}`",
        "",
        f"Page cache {o['page_cache']}, compile cache {o['compile_cache']}, fused_kernels "
        f"{o.get('fused_kernels', 'auto')}, {o['threads']} thread(s).",
        "",
        "| run | mode | read s | setup_anndata s | whole train() cells/s | steady cells/s | steady cells per CPU-s "
        "| first step s | other CPU |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['run']} | {r['mode']} | {r['read_s']:.1f} | {r['setup_s']:.1f} | {r['train_cells_per_s']:.0f} | "
        f"{_fmt(r, 'steady_cells_per_s')} | {_fmt(r, 'steady_cells_per_cpu_s')} | {_fmt(r, 'first_step_s', '{:.1f}')} | "
        f"{r['other_cpu_frac']:.2f} |"
        for r in o["runs"]
    ]
    lines += ["", "; ".join(f"{k}: {v:.2f}" for k, v in o["ratios"].items()), ""]
    return "\n".join(lines)
