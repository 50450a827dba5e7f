"""A self-contained HTML report: a title and a list of sections, images inlined as base64 PNG.

Features add sections with :meth:`Report.add` (raw HTML), :meth:`Report.add_figure` (a matplotlib
figure) or :meth:`Report.add_table` (a DataFrame). No script, font or image is fetched from the
network: the file can be mailed and opened offline.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;color:#222;background:#fafafa}
main{max-width:1200px;margin:0 auto;padding:1em 2em}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em}
nav{font-size:.9em;margin:.5em 0 1em}nav a{margin-right:1em;color:#246;text-decoration:none}
section{background:#fff;border:1px solid #e4e4e4;border-radius:6px;padding:.6em 1.2em;margin:1em 0}
img{max-width:100%;height:auto}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:right}th{background:#f0f0f0}
td:first-child,th:first-child{text-align:left}
.scroll{max-height:420px;overflow:auto;display:inline-block}
.note{color:#555;font-size:.9em}
.kv td{text-align:left;max-width:900px;word-break:break-word}
"""


@dataclass
class Section:
    title: str
    body: str  # HTML


@dataclass
class Report:
    title: str
    subtitle: str = ""
    sections: list[Section] = field(default_factory=list)

    def add(self, title: str, body_html: str) -> None:
        self.sections.append(Section(title, body_html))

    def add_figure(self, title: str, fig, note: str = "", dpi: int = 90) -> None:
        self.add(title, figure_html(fig, title, dpi) + (f'<p class="note">{html.escape(note)}</p>' if note else ""))

    def add_table(self, title: str, df: pd.DataFrame, note: str = "", index: bool = True) -> None:
        self.add(title, table_html(df, index) + (f'<p class="note">{html.escape(note)}</p>' if note else ""))

    def to_html(self) -> str:
        nav = "".join(f'<a href="#s{i}">{html.escape(s.title)}</a>' for i, s in enumerate(self.sections))
        body = "".join(
            f'<section id="s{i}"><h2>{html.escape(s.title)}</h2>{s.body}</section>' for i, s in enumerate(self.sections)
        )
        return (
            f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body><main>"
            f'<h1>{html.escape(self.title)}</h1><p class="note">{html.escape(self.subtitle)}</p>'
            f"<nav>{nav}</nav>{body}</main></body></html>"
        )

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_html(), encoding="utf-8")
        return path


def figure_html(fig, alt: str, dpi: int = 90) -> str:
    """An ``<img>`` holding the figure as an inline PNG; closes the figure."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def table_html(df: pd.DataFrame, index: bool = True, css_class: str = "") -> str:
    """A scrollable HTML table; floats with 4 significant digits."""
    table = df.to_html(index=index, float_format=lambda x: f"{x:.4g}", border=0, classes=css_class or None)
    return f'<div class="scroll">{table}</div>'
