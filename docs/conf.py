"""Sphinx configuration of cellvi's documentation (MyST markdown, myst-nb notebooks, autosummary API).

Build with ``make docs`` (warnings are errors). Tutorials under ``tutorials/`` are MyST markdown notebooks
that myst-nb executes at build time; results are cached by jupyter-cache in ``docs/_build/.jupyter_cache``
so that a rebuild re-executes only the notebooks that changed.
"""

from __future__ import annotations

import os
import sys
from importlib.metadata import version as _version
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE / "_ext"))
# The source tree first, so that the docs describe this checkout's cellvi even without an editable install.
sys.path.insert(0, str(ROOT / "src"))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)
# Tutorials execute in kernels started from here: keep them to the threads the build was given.
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "2")
os.environ.setdefault("CELLVI_DATA_DIR", str((ROOT.parent / "shared" / "data").resolve()))

project = "cellvi"
author = "The cellvi developers"
copyright = "2026, the cellvi developers"
try:  # the version of this checkout, which an installed cellvi may not be
    import tomllib

    release = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
except ImportError:  # Python 3.10: no tomllib; the installed package's version
    release = _version("cellvi")
version = release

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx.ext.mathjax",
    "bench_tables",
    "repo_links",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
master_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints", "_ext", "README.md"]
templates_path = ["_templates"]

# MyST
myst_enable_extensions = ["colon_fence", "deflist", "dollarmath", "attrs_inline"]
myst_heading_anchors = 3
# Pages that other contributors add under docs/ may start at a level-2 heading; that is cosmetic, not an error.
suppress_warnings = ["myst.header"]
if os.environ.get("CELLVI_DOCS_EXECUTE") == "off":
    # unexecuted notebooks carry no language_info, so myst-nb cannot name their lexer
    suppress_warnings.append("myst-nb.lexer")

# myst-nb: execute tutorials at build time, cache-aware (a rebuild reruns only changed notebooks).
nb_execution_mode = os.environ.get("CELLVI_DOCS_EXECUTE", "cache")
nb_execution_cache_path = str(HERE / "_build" / ".jupyter_cache")
nb_execution_timeout = 1200  # per cell; generous for busy CI machines
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True

# API reference: autosummary pages generated from numpydoc docstrings (parsed by napoleon).
autosummary_generate = True
autosummary_imported_members = True
autodoc_default_options = {"members": True, "inherited-members": True, "show-inheritance": False}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autoclass_content = "class"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = True
napoleon_use_param = True
napoleon_custom_sections = [("Shapes", "notes_style")]
nitpicky = False


html_theme = "furo"
html_title = f"cellvi {release}"
html_static_path = []
html_theme_options = {
    "sidebar_hide_name": False,
    "navigation_with_keys": True,
}
html_show_sourcelink = True
repo_source_url = os.environ.get("CELLVI_SOURCE_URL", "")  # no public repository URL yet: paths as text
