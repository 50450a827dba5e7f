"""Sphinx extension: the tables of the performance page, rendered at build time from ``bench/results/*.json``.

In a MyST page::

    ```{bench-table} speed
    ```

renders ``bench/results/speed.json`` as a markdown table (with the machine it was measured on and the
command that reproduces it), so the figures on the page are always those of the results file in the
repository: nothing is retyped. A results file that changes triggers a rebuild of the page. A benchmark
with no renderer in ``BENCHMARKS`` is shown through the ``<stem>.md`` its own script wrote.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"


def _table(header: list[str], rows: list[list[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return lines


def _x(value: float) -> str:
    return f"{value:.2f}x"


def speed(data: dict) -> list[str]:
    rows = []
    for r in data["comparisons"]:
        c, s = r["cellvi"], r["scvi"]
        rows.append(
            [
                r["dataset"],
                r["epochs"],
                c["runs"],
                f"{c['epoch_s']:.2f}",
                f"{s['epoch_s']:.2f}",
                f"**{_x(r['train_speedup'])}**",
                f"{c['train_cells_per_s']:,.0f} / {s['train_cells_per_s']:,.0f}",
                _x(r["wall_speedup"]),
                _x(r["latent_speedup"]),
                _x(r["normalized_expression_speedup"]),
                f"{c['peak_rss_mib']:,.0f} / {s['peak_rss_mib']:,.0f}",
                f"{100 * r['heldout_elbo_rel_diff']:+.2f}%",
                f"{max(c['other_procs_cpu_frac'], s['other_procs_cpu_frac']):.2f}",
            ]
        )
    lines = []
    if rows:
        lines += _table(
            [
                "data",
                "epochs",
                "runs",
                "s/epoch cellvi",
                "s/epoch scvi-tools",
                "training speed-up",
                "cells/s cellvi / scvi-tools",
                "whole train()",
                "latent",
                "normalised expression",
                "peak RSS MiB cellvi / scvi-tools",
                "held-out ELBO vs scvi-tools",
                "other CPU",
            ],
            rows,
        )
    for t in data.get("time_to_quality", []):
        lines += [
            "",
            f"Time to quality on {t['dataset']}: scvi-tools trained {t['scvi_epochs']} epochs in "
            f"{t['scvi_train_s']:.1f} s to a held-out ELBO of {t['target_heldout_elbo']:.2f}; cellvi reached it "
            f"after {t['cellvi_epochs_to_target']} epochs, {t['cellvi_train_s']:.1f} s "
            f"(reached: {t['cellvi_reached']}): **{_x(t['speedup'])}**.",
        ]
    return lines


def speed_comparisons(data: dict) -> list[str]:
    """The comparisons of a speed run only, for files whose time-to-quality part another file supersedes."""
    lines = speed({**data, "time_to_quality": []})
    if data.get("time_to_quality"):
        lines += [
            "",
            "(This file also holds a time-to-quality measurement of an earlier version of the benchmark, "
            "superseded by `speed_ttq.json`.)",
        ]
    return lines


def out_of_core(data: dict) -> list[str]:
    rows = [
        [
            mode,
            sum(r["mode"] == mode for r in data["runs"]),
            f"{m['train_cells_per_s']:,.0f}",
            f"{m['steady_cells_per_s']:,.0f}" if "steady_cells_per_s" in m else "n/a",
            f"{m['latent_cells_per_s']:,.0f}",
            f"{m['peak_rss_train_mib']:,.0f}",
            f"{m['peak_rss_mib']:,.0f}",
        ]
        for mode, m in data["medians"].items()
    ]
    run = data["runs"][0]
    lines = [
        f"{run['n_cells']:,} cells x {run['n_genes']:,} genes, batch {run['batch_size']}, "
        f"{'one epoch' if data.get('max_steps') is None else str(data['max_steps']) + ' steps'}, "
        f"{run['threads']} threads, torch {run['torch']}, file {data['file_gib']:.2f} GiB, "
        f"page cache warmed: {data['page_cache_warmed']}. Medians over runs.",
        "",
    ]
    lines += _table(
        [
            "mode",
            "runs",
            "training cells/s (whole train())",
            "steady-state cells/s",
            "latent cells/s",
            "peak RSS while training (MiB)",
            "peak RSS (MiB)",
        ],
        rows,
    )
    if data["ratios"]:
        lines += [""] + _table(["ratio", "value"], [[k, _x(v)] for k, v in data["ratios"].items()])
    return lines


def sparse_first_layer(data: dict) -> list[str]:
    meta = data["meta"]
    rows = [
        [
            name,
            f"{r['cells']:,} x {r['genes']:,}",
            f"{r['median_s']['embedding_bag']:.3f}",
            f"{r['median_s']['addmm']:.3f}",
            f"**{_x(r['speedup'])}**",
            f"{r['max_abs_latent_diff']:.1e}",
        ]
        for name, r in data["results"].items()
    ]
    return [
        f"{meta['cpu']}, torch {meta['torch']}, {meta['threads']} threads, median of {meta['repeats']}.",
        "",
    ] + _table(
        ["data", "cells x genes", "embedding_bag (s)", "sparse addmm (s)", "speed-up", "max latent difference"], rows
    )


def query_mapping(data: dict) -> list[str]:
    rows = [
        [
            s["held_out"],
            s["n_reference"],
            s["n_query"],
            f"{s['query_accuracy']:.3f}",
            f"{s['denovo_query_accuracy']:.3f}",
            f"{s['mapped_knn_accuracy']:.3f}",
            f"{s['mapped_batch_mixing']:.3f}",
            f"{s['reference_train_s']:.1f}",
            f"{s['query_map_s']:.1f}",
        ]
        for s in data["splits"]
    ]
    return [
        f"{data['lib']} {data['version']} on {data['data']}, {data['threads']} threads, epochs {data['epochs']}.",
        "",
    ] + _table(
        [
            "held-out batch",
            "reference cells",
            "query cells",
            "label transfer accuracy",
            "de novo accuracy",
            "joint kNN accuracy",
            "joint batch mixing",
            "reference s",
            "query mapping s",
        ],
        rows,
    )


def de_benchmark(data: dict) -> list[str]:
    libs = ("cellvi", "scvi", "wilcoxon")
    ifnb, sim, sp = data["ifnb"], data["sim"], data["speed"]
    rows = [
        [
            lib,
            f"{ifnb[lib]['frac_top_in_hallmark_ifn_alpha']:.2f}",
            f"{ifnb[lib]['frac_top_in_hallmark_ifn_alpha_or_gamma']:.2f}",
            f"{sim[lib]['auroc']:.3f}",
            f"{sim[lib]['auprc']:.3f}",
        ]
        for lib in libs
    ]
    lines = [data.get("note", ""), ""] + _table(
        [
            "method",
            f"ifnb: top {ifnb['top']} in Hallmark IFN-alpha",
            "ifnb: in IFN-alpha or gamma",
            "simulation AUROC",
            "simulation AUPRC",
        ],
        rows,
    )
    rows = [
        [
            lib,
            f"{sp[lib]['train_s']:.1f}",
            f"{sp[lib]['one_vs_all_change_s']:.2f}",
            f"{sp[lib]['one_vs_all_vanilla_s']:.2f}",
        ]
        for lib in ("cellvi", "scvi")
    ]
    lines += [
        "",
        f"One-vs-all on {sp['n_cells']:,} x {sp['n_genes']:,} simulated cells, {sp['n_groups']} groups, "
        f"{sp['n_samples_per_group']:,} samples per group:",
        "",
    ]
    return lines + _table(["library", "train s", "one-vs-all change s", "one-vs-all vanilla s"], rows)


def denoise_benchmark(data: dict) -> list[str]:
    rows = [
        [
            lib,
            f"{data[lib]['median_l1']:.3f}",
            f"{data[lib]['mean_l1']:.3f}",
            f"{data[lib]['poisson_deviance']:.3f}",
            f"{data[lib].get('train_s', float('nan')):.1f}",
        ]
        for lib in ("naive", "cellvi", "scvi")
    ]
    return [
        f"{data['data']}: {data['frac']:.0%} of the non-zero counts hidden ({data['hidden_entries']:,} entries), "
        f"{data['epochs']} epochs, {data['threads']} thread(s). {data.get('note', '')}",
        "",
    ] + _table(["method", "median L1", "mean L1", "Poisson deviance", "train s"], rows)


def pickle_safety(data: list) -> list[str]:
    rows = [
        [
            lib["library"],
            case["planted_in"],
            case["payload_ran"],
            case["load_succeeded"],
            (case["error"] or "").split(":")[0],
        ]
        for lib in data
        for case in lib["cases"]
    ]
    return _table(["library", "payload planted in", "payload ran", "load succeeded", "error"], rows)


# results file stem -> (renderer, the command that rewrites it, run from the repository root)
BENCHMARKS: dict[str, tuple[Callable, str]] = {
    "speed": (speed, ".venv/bin/python bench/speed.py --datasets sim20k mouse10k"),
    "speed_sim200k": (
        speed_comparisons,
        ".venv/bin/python bench/speed.py --datasets sim200k --out bench/results/speed_sim200k",
    ),
    "out_of_core_1000000": (
        out_of_core,
        ".venv/bin/python bench/out_of_core.py --n-cells 1000000 --modes cellvi-disk,cellvi-memory --threads 1",
    ),
    "out_of_core_10000000": (
        out_of_core,
        ".venv/bin/python bench/out_of_core.py --n-cells 10000000 --modes cellvi-disk",
    ),
    "sparse_first_layer": (sparse_first_layer, ".venv/bin/python bench/sparse_first_layer.py"),
    "query_mapping_pbmc_3chemistries_cellvi": (query_mapping, ".venv/bin/python bench/query_mapping.py --all"),
    "query_mapping_pbmc_3chemistries_scvi": (query_mapping, ".venv/bin/python bench/query_mapping.py --all"),
    "de_benchmark": (de_benchmark, ".venv/bin/python bench/de_benchmark.py"),
    "denoise_benchmark": (denoise_benchmark, ".venv/bin/python bench/denoise_benchmark.py"),
    "pickle_safety": (pickle_safety, ".venv/bin/python bench/pickle_safety.py"),
}


def benchmark_markdown(stem: str) -> list[str]:
    """For a benchmark without a renderer here: the ``<stem>.md`` its script wrote from the same run's JSON
    (title dropped, headings demoted below the page's), so a new benchmark shows up without retyping."""
    lines = (RESULTS / f"{stem}.md").read_text().splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    lines = ["#" * 2 + line if line.startswith("#") else line for line in lines]
    return lines + ["", f"Source: `bench/results/{stem}.md`, written by its benchmark script with `{stem}.json`."]


def render(stem: str) -> list[str]:
    """Markdown lines for ``bench/results/<stem>.json``: the machine, the table, the command to rerun."""
    if stem not in BENCHMARKS:
        return benchmark_markdown(stem)
    renderer, command = BENCHMARKS[stem]
    data = json.loads((RESULTS / f"{stem}.json").read_text())
    lines = []
    if isinstance(data, dict) and data.get("machine"):
        lines += [f"Machine: {data['machine']}.", ""]
    lines += renderer(data)
    lines += ["", f"Source: `bench/results/{stem}.json`. Reproduce: `{command}`"]
    return lines


class BenchTable(SphinxDirective):
    """``{bench-table} STEM``: the table of ``bench/results/STEM.json``."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        stem = self.arguments[0]
        path = RESULTS / f"{stem}.json" if stem in BENCHMARKS else RESULTS / f"{stem}.md"
        if not path.is_file():
            raise self.error(f"bench-table: {path} does not exist")
        self.env.note_dependency(str(path))
        container = nodes.container(classes=["bench-table"])
        self.state.nested_parse(StringList(render(stem), source=str(path)), self.content_offset, container)
        return [container]


def setup(app):
    app.add_directive("bench-table", BenchTable)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
