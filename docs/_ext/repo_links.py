"""Sphinx extension: markdown links from a docs page to a file of the repository outside ``docs/``.

Pages under ``docs/`` may link to code or results, e.g. ``[the benchmark](../bench/speed.py)``. Sphinx
cannot resolve those (the file is not a page of the site) and MyST would warn or copy the file as a
download. This extension turns each such link into a link to ``repo_source_url`` + the file's path in the
repository when that option is set (``CELLVI_SOURCE_URL``, e.g. a repository's ``.../blob/main``), and into
the path as literal text otherwise. A link to a file that does not exist is left alone, so MyST still warns.
"""

from __future__ import annotations

from pathlib import Path

from docutils import nodes
from sphinx import addnodes


def _repo_path(app, node) -> Path | None:
    """The repository file a MyST link points to, when it lies outside the docs source folder."""
    root = Path(app.srcdir).resolve().parent
    docdir = (Path(app.srcdir) / node.get("refdoc", "")).parent
    target = node.get("reftarget", "")
    if node.get("refdomain") == "doc" and Path(target).is_absolute():
        candidates = [Path(target + s) for s in app.config.source_suffix]
    elif isinstance(node, addnodes.download_reference) or (node.get("refdomain") is None and "/" in target):
        candidates = [docdir / target.split("#")[0]]  # a file MyST would copy, or a folder of the repository
    else:
        return None
    for path in candidates:
        path = path.resolve()
        if path.exists() and root in path.parents and Path(app.srcdir).resolve() not in (path, *path.parents):
            return path.relative_to(root)
    return None


def rewrite_links(app, doctree) -> None:
    for node in list(doctree.findall(lambda n: isinstance(n, (addnodes.pending_xref, addnodes.download_reference)))):
        if node.get("reftype") != "myst":
            continue
        rel = _repo_path(app, node)
        if rel is None:
            continue
        text = node.astext()
        base = app.config.repo_source_url.rstrip("/")
        if base:
            new = nodes.reference("", "", nodes.Text(text), refuri=f"{base}/{rel.as_posix()}", internal=False)
        else:
            path = nodes.literal(rel.as_posix(), rel.as_posix(), classes=["repo-path"])
            new = (
                path if text == rel.as_posix() else nodes.inline("", "", nodes.Text(f"{text} ("), path, nodes.Text(")"))
            )
        node.replace_self(new)


def setup(app):
    app.add_config_value("repo_source_url", "", "env")
    app.connect("doctree-read", rewrite_links)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
