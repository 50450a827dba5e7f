"""``cellvi.grn``: gene regulatory networks and in-silico perturbation (see :mod:`cellvi.analysis.grn`)."""

from .analysis.grn import *
from .analysis.grn import __all__  # noqa: F401
