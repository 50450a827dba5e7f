"""Training keeps the memory it frees (cellvi.train.heap): measured as page faults in a fresh process."""

import json
import subprocess
import sys

import pytest

from cellvi.train.heap import _glibc

# Rounds of three 8 MB arrays written and freed: glibc's adaptive thresholds (8 MB blocks, 16 MB trim)
# release part of the 24 MB at the heap's top after every round, so each round faults pages in afresh
# (~800-1,300 faults per round measured here).
SCRIPT = """
import json, resource, sys
import numpy as np
from cellvi.train.heap import freed_memory_kept

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

def rounds(n):
    counts = []
    for _ in range(n):
        before = faults()
        arrays = [np.ones(2_000_000, dtype=np.float32) for _ in range(3)]
        del arrays
        counts.append(faults() - before)
    return counts

def rss_kib():
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() // 1024

kept = sys.argv[1] == "kept"
with freed_memory_kept(kept):
    counts = rounds(6)
    held = rss_kib()
print(json.dumps({"faults": counts, "rss_in_kib": held, "rss_after_kib": rss_kib()}))
"""


def _run(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(_glibc() is None, reason="needs glibc's malloc (mallopt / malloc_trim)")
def test_freed_memory_is_reused_while_training_and_given_back_after():
    plain = _run("plain")
    if min(plain["faults"][2:]) < 400:
        pytest.skip(f"this malloc keeps freed 8 MB blocks by itself (faults per round {plain['faults']})")
    kept = _run("kept")
    assert max(kept["faults"][2:]) < 100, kept  # the second and later rounds reuse the first round's pages
    assert kept["rss_in_kib"] - kept["rss_after_kib"] > 16_000, kept  # the kept 24 MB are given back after
