#!/usr/bin/env bash
# Create bench/.venv-scvi: an isolated environment with scvi-tools 1.4.2, the
# reference that cellvi is benchmarked against. torch is installed first and
# pinned (constraints-scvi.txt) so pip keeps the CPU wheel and never pulls CUDA.
# Usage: bash bench/setup_scvi_env.sh   (idempotent; re-running is cheap)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv-scvi"
PY="${PYTHON:-python3}"

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "torch==2.13.0"
"$VENV/bin/python" -m pip install -q -c "$HERE/constraints-scvi.txt" "scvi-tools==1.4.2"
"$VENV/bin/python" - <<'PY'
import time, resource
t = time.perf_counter()
import scvi, torch
print(f"scvi {scvi.__version__}, torch {torch.__version__}: import {time.perf_counter() - t:.2f} s, "
      f"RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
PY
# the integration benchmark's other methods and its scoring (bench/integration_worker.py --lib baselines)
"$VENV/bin/python" -m pip install -q -c "$HERE/constraints-scvi.txt" harmonypy==2.1.0 scanorama==1.7.4 scib-metrics==0.5.10
