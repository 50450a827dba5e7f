# The two entry points of the README:
#   make demo   [DATA=path.h5ad BATCH_KEY=batch LABELS_KEY=cell_type EPOCHS=...]  install, run the whole analysis
#               (simulated branching data without DATA), write OUT/report.html
#   make test                                                  create .venv, install, run the test suite
# and, for contributors:
#   make docs    build the documentation site (docs/_build/html), tutorials executed, warnings are errors
#   make lint    ruff check + ruff format --check + mypy on the public modules
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.installed-docs
DEV_STAMP := $(VENV)/.installed-dev
DATA ?=
BATCH_KEY ?=
LABELS_KEY ?=
EPOCHS ?=
OUT ?= demo_output
SPHINXOPTS ?= -W --keep-going

.PHONY: demo test install docs docs-clean docs-check lint clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, from the pin: an unpinned torch would pull several GB of CUDA packages
	$(BIN)/python -m pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test,docs]"
	touch $(DOCS_STAMP)

$(DEV_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test,dev]"
	touch $(DEV_STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/cellvi $(if $(DATA),run $(DATA),demo) -o $(OUT) --overwrite $(if $(BATCH_KEY),--batch-key $(BATCH_KEY)) $(if $(LABELS_KEY),--labels-key $(LABELS_KEY)) $(if $(EPOCHS),--max-epochs $(EPOCHS))
	@echo "The report is $(abspath $(OUT))/report.html (open it in a browser)"

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Tutorials are executed by myst-nb with a jupyter-cache in docs/_build/.jupyter_cache: a rebuild reruns
# only the notebooks whose code changed. CELLVI_DOCS_EXECUTE=force reruns all, =off none.
docs: $(DOCS_STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m sphinx -b html $(SPHINXOPTS) docs docs/_build/html
	@echo "Open docs/_build/html/index.html"

# Open the built site in headless Chromium and check a tutorial page (needs chromium + chromedriver).
docs-check: $(DOCS_STAMP)
	CELLVI_REQUIRE_DOCS=1 $(BIN)/python -m pytest -q tests/test_docs_site.py tests/docs

docs-clean:
	rm -rf docs/_build docs/reference/generated

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) $(OUT) docs/_build docs/reference/generated
