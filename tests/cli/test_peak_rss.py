"""The peak memory `cellvi run` reports is its own, not the peak of the process that started it."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cellvi.cli._common import peak_rss_mib

PARENT_MIB = 1500


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc (VmHWM)")
def test_child_peak_excludes_the_parents_peak():
    # Linux hands ru_maxrss down through fork and exec: a child of a parent that once held 1.5 GB
    # would report at least 1.5 GB, though it never used that much itself.
    parent = textwrap.dedent(
        f"""
        import resource, subprocess, sys
        import numpy as np
        held = np.ones({PARENT_MIB} * 2**20 // 8)  # touched pages: resident
        del held
        child = (
            "import resource; from cellvi.cli._common import peak_rss_mib; "
            "print(peak_rss_mib(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
        )
        print(subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True).stdout)
        """
    )
    out = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, check=True, timeout=120)
    own_peak, inherited = (float(x) for x in out.stdout.split())
    if inherited < PARENT_MIB:
        pytest.skip("this kernel does not hand ru_maxrss down to children: nothing to guard against")
    assert own_peak < PARENT_MIB - 500  # importing cellvi and torch takes ~360 MiB


def test_peak_is_at_least_current_use():
    now = Path("/proc/self/statm")
    if now.exists():
        import resource

        resident_mib = int(now.read_text().split()[1]) * resource.getpagesize() / 2**20
        assert peak_rss_mib() >= resident_mib * 0.99
    else:
        assert peak_rss_mib() > 0
