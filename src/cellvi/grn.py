"""``cellvi.grn``: gene regulatory networks and in-silico perturbation (see :mod:`cellvi.analysis.grn`)."""

from .analysis.grn import *  # noqa: F403 (the same public names)
from .analysis.grn import __all__  # noqa: F401
