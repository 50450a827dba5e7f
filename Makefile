# The two entry points of the README:
#   make demo   [DATA=path.h5ad BATCH_KEY=batch EPOCHS=...]  create .venv, install, train, write outputs
#   make test                                                  create .venv, install, run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?=
BATCH_KEY ?=
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
	$(BIN)/cellvi demo --out $(OUT) $(if $(DATA),--data $(DATA)) $(if $(BATCH_KEY),--batch-key $(BATCH_KEY)) $(if $(EPOCHS),--max-epochs $(EPOCHS))

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) $(OUT)
