"""``cellvi.grn``: gene regulatory networks and in-silico perturbation (see :mod:`cellvi.analysis.grn`)."""

from .analysis.grn import *  # noqa: F401,F403
from .analysis.grn import __all__  # noqa: F401
