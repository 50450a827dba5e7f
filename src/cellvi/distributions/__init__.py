"""Count likelihoods (NB, ZINB, Poisson) in log space, and samplers.

* :mod:`.counts`: entry-wise log-probabilities (``log_nb``, ``log_zinb``, ``log_poisson``), per-cell sums
  given the mean (``log_nb_sum``, ``log_zinb_sum``, ``log_poisson_sum``) and samplers.
* :mod:`.softmax_counts`: per-cell sums given the decoder's logits and the library, the training path
  (``log_nb_sum_softmax``, ``log_zinb_sum_softmax``, ``log_poisson_sum_softmax``).
"""

from .counts import (
    EPS,
    log_nb,
    log_nb_sum,
    log_poisson,
    log_poisson_sum,
    log_zinb,
    log_zinb_sum,
    sample_gamma_rate,
    sample_nb,
    sample_poisson,
    sample_zinb,
)
from .softmax_counts import log_nb_sum_softmax, log_poisson_sum_softmax, log_zinb_sum_softmax

__all__ = [
    "EPS",
    "log_nb",
    "log_nb_sum",
    "log_nb_sum_softmax",
    "log_poisson",
    "log_poisson_sum",
    "log_poisson_sum_softmax",
    "log_zinb",
    "log_zinb_sum",
    "log_zinb_sum_softmax",
    "sample_gamma_rate",
    "sample_nb",
    "sample_poisson",
    "sample_zinb",
]
