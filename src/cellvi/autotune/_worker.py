"""A tuning worker process: ``python -m cellvi.autotune._worker CTX.json N_TRIALS WORKER_INDEX`` runs
N_TRIALS trials of the study described in CTX.json (written by :func:`cellvi.autotune.tune`)."""

import json
import sys
from pathlib import Path

from .tuner import _optimize

if __name__ == "__main__":
    _optimize(json.loads(Path(sys.argv[1]).read_text()), int(sys.argv[2]), int(sys.argv[3]))
