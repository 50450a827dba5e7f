#!/usr/bin/env bash
# Create bench/.venv-grn: the GRN peers for bench/grn_beeline.py. torch 2.13.0 (CPU) first, so that
# nothing later pulls a CUDA wheel, then arboreto (GENIE3, GRNBoost2; needs dask/distributed), then a
# time-boxed attempt at CellOracle (celloracle, else celloracle-lite). Every failure is logged with its
# error to bench/results/grn_env_setup.log and does not stop the script.
# Usage: bash bench/setup_grn_env.sh   (idempotent)
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv-grn"
PY="${PYTHON:-python3}"
LOG="$HERE/results/grn_env_setup.log"
mkdir -p "$HERE/results"
: > "$LOG"
step() {  # step NAME TIMEOUT_S cmd...: run, log the outcome and the tail of its output
  local name="$1" limit="$2"; shift 2
  local start=$(date +%s)
  if timeout "$limit" "$@" > "/tmp/grn_env_$name.out" 2>&1; then
    echo "[$name] OK ($(( $(date +%s) - start )) s)" >> "$LOG"
  else
    echo "[$name] FAILED rc=$? ($(( $(date +%s) - start )) s); last lines:" >> "$LOG"
    tail -n 25 "/tmp/grn_env_$name.out" >> "$LOG"
  fi
}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
step pip 300 "$VENV/bin/python" -m pip install -q --upgrade pip
step torch 900 "$VENV/bin/python" -m pip install -q "torch==2.13.0"
# arboreto 0.1.6 fails with dask-expr ("TypeError: Must supply at least one delayed object",
# aertslab/arboreto#42): pin the last dask/distributed before dask-expr became the default.
step arboreto 900 "$VENV/bin/python" -m pip install -q arboreto pandas scikit-learn "dask[dataframe]==2024.2.1" "distributed==2024.2.1"
step arboreto_import 300 "$VENV/bin/python" -c "import arboreto, dask, distributed; print(arboreto.__name__, dask.__version__, distributed.__version__)"
# CellOracle: at most ~45 minutes in all. A plain install fails building velocyto (its setup.py imports
# numpy inside pip's isolated build environment); the second try builds velocyto without isolation.
step celloracle 600 "$VENV/bin/python" -m pip install -q celloracle
if ! "$VENV/bin/python" -c "import celloracle" > /dev/null 2>&1; then
  step build_tools 300 "$VENV/bin/python" -m pip install -q cython "setuptools<70" wheel numpy
  step velocyto_no_isolation 900 "$VENV/bin/python" -m pip install --no-build-isolation -q velocyto
  step celloracle_no_isolation 1800 "$VENV/bin/python" -m pip install --no-build-isolation -q celloracle
fi
if ! "$VENV/bin/python" -c "import celloracle" >> "$LOG" 2>&1; then
  echo "[celloracle_import] FAILED" >> "$LOG"
  step celloracle_lite 300 "$VENV/bin/python" -m pip install -q celloracle-lite
  "$VENV/bin/python" -c "import celloracle" >> "$LOG" 2>&1 && echo "[celloracle_lite_import] OK" >> "$LOG" \
    || echo "[celloracle_lite_import] FAILED" >> "$LOG"
else
  echo "[celloracle_import] OK" >> "$LOG"
fi
# celloracle-lite pins numpy 1.26; the newest pyarrow (pulled by dask) then refuses to import
step pyarrow 300 "$VENV/bin/python" -m pip install -q "pyarrow<20" "dask[dataframe]==2024.2.1" "distributed==2024.2.1"
cat "$LOG"
