"""The performance page's tables are rendered from bench/results/*.json (docs/_ext/bench_tables.py)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("sphinx", reason="the docs extra is not installed")
REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("bench_tables", REPO / "docs" / "_ext" / "bench_tables.py")
bench_tables = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_tables)


@pytest.mark.parametrize("stem", sorted(bench_tables.BENCHMARKS))
def test_every_listed_benchmark_renders_tables_and_its_command(stem):
    lines = bench_tables.render(stem)
    tables, block = [], []
    for line in [*lines, ""]:
        if line.startswith("|"):
            block.append(line)
        elif block:
            tables.append(block)
            block = []
    for table in tables:
        assert table[1].startswith("|---") and len(table) >= 3, "a table needs a header, a rule and rows"
        assert len({row.count("|") for row in table}) == 1, "ragged table"
    assert tables or any("**" in line for line in lines), "neither a table nor a headline figure"
    assert f"bench/results/{stem}.json" in lines[-1] and "bench/" in lines[-1].split("Reproduce:")[1]


def test_tables_carry_the_values_of_the_json_not_retyped_ones(tmp_path, monkeypatch):
    data = json.loads((bench_tables.RESULTS / "speed.json").read_text())
    data["comparisons"][0]["train_speedup"] = 12.345  # a value no real run had
    (tmp_path / "speed.json").write_text(json.dumps(data))
    monkeypatch.setattr(bench_tables, "RESULTS", tmp_path)
    text = "\n".join(bench_tables.render("speed"))
    assert "**12.35x**" in text


def test_a_benchmark_without_a_renderer_shows_its_scripts_markdown(tmp_path, monkeypatch):
    (tmp_path / "newbench.md").write_text("# New benchmark\n\n## Part\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    monkeypatch.setattr(bench_tables, "RESULTS", tmp_path)
    lines = bench_tables.render("newbench")
    assert "# New benchmark" not in lines and "#### Part" in lines and "| 1 | 2 |" in lines
