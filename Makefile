# The two entry points of the README:
#   make demo   [DATA=path.h5ad BATCH_KEY=batch LABELS_KEY=cell_type EPOCHS=...]  install, run the whole analysis
#               (simulated branching data without DATA), write OUT/report.html
#   make test                                                  create .venv, install, run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?=
BATCH_KEY ?=
LABELS_KEY ?=
EPOCHS ?=
OUT ?= demo_output

.PHONY: demo test install clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, from the pin: an unpinned torch would pull several GB of CUDA packages
	$(BIN)/python -m pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/cellvi $(if $(DATA),run $(DATA),demo) -o $(OUT) --overwrite $(if $(BATCH_KEY),--batch-key $(BATCH_KEY)) $(if $(LABELS_KEY),--labels-key $(LABELS_KEY)) $(if $(EPOCHS),--max-epochs $(EPOCHS))
	@echo "The report is $(abspath $(OUT))/report.html (open it in a browser)"

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) $(OUT)
