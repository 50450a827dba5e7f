"""The markdown of bench/de_speed.py's results (bench/results/de_speed.md), and the summaries of
earlier runs that a rerun keeps in the one results file."""

from __future__ import annotations

from pathlib import Path

TOPS = (30, 100)  # the top-k gene overlaps reported (bench/de_speed.py computes them)


def write_markdown(res: dict, path: Path):
    lines = [
        "# Differential expression speed",
        "",
        f"cellvi vs scvi-tools 1.4.2, same run, {res['threads']} torch thread(s). Command: `{res['command']}`. "
        f'Machine: {res["machine"]}. "other CPU": share of the machine\'s CPU other processes took '
        "while DE ran (a shared machine: seconds noisy, ratios less so).",
        "",
    ]
    for part, title in (
        ("onevsall", "One-vs-all, {n_groups} clusters, {n_cells} simulated cells x {n_genes} genes"),
        ("ifnb", "Pairwise, IFN-beta stimulation ({n_cells} cells x {n_genes} genes, stim vs ctrl, {epochs} epochs)"),
    ):
        if part not in res:
            continue
        r = res[part]
        c, s, ref = r["cellvi"], r["scvi"], r["cellvi"]["reference"]
        if r.get("command", res["command"]) != res["command"]:
            lines += [f"This part was measured by an earlier run: `{r['command']}`.", ""]
        if part == "onevsall" and r["n_cells"] < 200_000:
            lines += [
                f"Scaled down: {r['n_cells']:,} cells instead of the issue's 200,000 (a shared, busy machine).",
                "",
            ]
        lines += [
            f"## {title.format(**r)}",
            "",
            "| | median s (runs) | peak RSS MiB (DE increase) | other CPU |",
            "|---|---|---|---|",
            f"| cellvi (shared rounds, default) | {c['median_s']:.2f} ({c['runs']}) | {c['peak_rss_mib']:.0f} "
            f"(+{c['de_rss_increase_mib']:.0f}) | {c['other_cpu']:.2f} |",
            f"| cellvi shared rounds, mc_error=None (5000 pairs) | {c['exact_5000_pairs_s']:.2f} (1) | | |",
            f"| cellvi reference (per comparison, the earlier method) | {ref['median_s']:.2f} ({ref['runs']}) | | |",
            f"| scvi-tools 1.4.2 | {s['median_s']:.2f} ({s['runs']}) | {s['peak_rss_mib']:.0f} "
            f"(+{s['de_rss_increase_mib']:.0f}) | {s['other_cpu']:.2f} |",
            "",
            f"Speed-up vs scvi-tools: **{r['speedup_vs_scvi']:.2f}x** (reference path: "
            f"{r['reference_speedup_vs_scvi']:.2f}x). Pairs per comparison: {c.get('n_pairs')}, largest "
            f"Monte-Carlo error of proba_de over all genes: {c.get('mc_error_max', float('nan')):.4f}.",
            "",
            "| top genes agreeing | default vs reference | mc_error=None vs reference | "
            "reference vs reference (noise floor) |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| top {k} | {c[f'overlap{k}_default_vs_reference']:.3f} | {c[f'overlap{k}_exact_vs_reference']:.3f} | "
            f"{c.get(f'overlap{k}_reference_vs_reference', float('nan')):.3f} |"
            for k in TOPS
        ]
        if part == "ifnb" and res.get("ifnb_reruns"):
            lines += ["", "Earlier runs of this part, replaced by the one above (all runs are kept, none chosen):", ""]
            lines += [
                f"- {e['speedup_vs_scvi']:.2f}x: cellvi {e['cellvi_median_s']:.2f} s "
                f"({', '.join(f'{x:.2f}' for x in e['cellvi_all_s'])}), scvi-tools {e['scvi_median_s']:.2f} s "
                f"({', '.join(f'{x:.2f}' for x in e['scvi_all_s'])}), other CPU {e['other_cpu'][0]:.2f} / "
                f"{e['other_cpu'][1]:.2f}; `{e['command']}`"
                for e in res["ifnb_reruns"]
            ]
        if part == "ifnb":
            lines += [
                "",
                "ISG precision (share of the top 30 up-regulated genes in Hallmark IFN-alpha): "
                f"cellvi default {c['isg_precision_top30_default']:.2f}, reference "
                f"{c['isg_precision_top30_reference0']:.2f} / {c['isg_precision_top30_reference1']:.2f}, "
                f"scvi-tools {s['isg_precision_top30_default']:.2f}.",
            ]
        lines.append("")
    if res.get("onevsall_earlier"):
        lines += [
            "## One-vs-all at earlier sizes (earlier runs of this benchmark, kept for the scaling)",
            "",
            "| cells | cellvi median s (runs) | scvi-tools median s (runs) | speed-up | DE RSS increase MiB "
            "cellvi / scvi-tools | top-30 overlap default vs reference (noise floor) | other CPU |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {e['n_cells']:,} | {e['cellvi_median_s']:.2f} ({e['cellvi_runs']}) | {e['scvi_median_s']:.2f} "
            f"({e['scvi_runs']}) | {e['speedup_vs_scvi']:.2f}x | +{e['cellvi_de_rss_increase_mib']:.0f} / "
            f"+{e['scvi_de_rss_increase_mib']:.0f} | {e['overlap30_default_vs_reference']:.3f} "
            f"({e['overlap30_reference_vs_reference'] or float('nan'):.3f}) | {e['cellvi_other_cpu']:.2f} / "
            f"{e['scvi_other_cpu']:.2f} |"
            for e in res["onevsall_earlier"]
        ]
        lines.append("")
    if "fdr" in res:
        r = res["fdr"]
        lines += [
            f"## FDR on simulated data ({r['n_cells']} cells x {r['n_genes']} genes, type0 vs type1)",
            "",
            "| cellvi path | called at FDR 0.05 | not truly DE among them | AUROC |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {n} | {r[f'fdr_{n}']['n_called']} | {r[f'fdr_{n}']['false_discovery_share']:.3f} | "
            f"{r[f'fdr_{n}']['auroc']:.3f} |"
            for n in ("default", "reference")
        ]
        lines.append("")
    path.write_text("\n".join(lines))


def pairwise_summary(r: dict, command: str | None) -> dict:
    """The headline figures of an IFN-beta pairwise result that a rerun replaces."""
    return {
        "command": r.get("command", command),
        "speedup_vs_scvi": r["speedup_vs_scvi"],
        "cellvi_median_s": r["cellvi"]["median_s"],
        "cellvi_all_s": r["cellvi"]["all_s"],
        "scvi_median_s": r["scvi"]["median_s"],
        "scvi_all_s": r["scvi"]["all_s"],
        "other_cpu": [r["cellvi"]["other_cpu"], r["scvi"]["other_cpu"]],
    }


def earlier_sizes(old: dict, n_cells: int) -> list[dict]:
    """The one-vs-all results of earlier runs at other cell counts (kept in the one results file as a
    table of earlier sizes), from the results file about to be replaced."""
    rows = [r for r in old.get("onevsall_earlier", []) if r["n_cells"] != n_cells]
    r = old.get("onevsall")
    if r and r["n_cells"] != n_cells:
        keep = ("median_s", "runs", "peak_rss_mib", "de_rss_increase_mib", "other_cpu")
        rows.append(
            {
                "n_cells": r["n_cells"],
                "command": old.get("command"),
                "speedup_vs_scvi": r["speedup_vs_scvi"],
                "overlap30_default_vs_reference": r["cellvi"]["overlap30_default_vs_reference"],
                "overlap30_reference_vs_reference": r["cellvi"].get("overlap30_reference_vs_reference"),
                **{f"{lib}_{k}": r[lib][k] for lib in ("cellvi", "scvi") for k in keep},
            }
        )
    return sorted(rows, key=lambda r: r["n_cells"])
