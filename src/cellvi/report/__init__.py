"""Self-contained HTML reports (images inlined, no network). :class:`Report` is a list of sections that any
feature can extend; :func:`build_run_report` makes the report of ``cellvi run``."""

from .html import Report, Section, figure_html, table_html
from .run_report import build_run_report

__all__ = ["Report", "Section", "build_run_report", "figure_html", "table_html"]
