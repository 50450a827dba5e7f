"""The training loss compiled with ``torch.compile``, falling back to eager execution.

Eagerly, each element-wise operation of a training step is its own pass over memory and its own
dispatch; at batch 128 on a CPU these small operations cost more than the matrix products. Compiled,
the forward and backward passes become a few fused loops: ~1.4x faster steps on a 2-core CPU (see
bench/README.md). Compilation costs ~24 s the first time on a machine and ~3-4 s in later processes,
which find the step in the on-disk caches (2,000 and 15,073 genes, 2 threads), and needs a C++ compiler
on CPU, which is why ``train(fused_kernels=None)`` compiles only long runs.

Only training steps are compiled; validation and inference stay eager, so that switching the module
between train and eval mode never triggers a recompilation.

Reproducibility: compiled code adds into shared memory with atomic operations wherever the graph
scatters-and-adds (the gradient of a gather, ``index_add``), and the order of those additions, so the
bits of the result, then differ from run to run (measured: the same seed gave a different model in
every process). The training loss therefore has no such operation when compiled: covariate rows are
selected by one-hot products (:func:`cellvi.nn.layers.select_rows`) and the likelihood writes each
non-zero entry once (:mod:`cellvi.distributions.softmax_counts`). ``torch.use_deterministic_algorithms``
would also do it, but it makes every indexed write a slow single-threaded fallback (~10% of a step).
``tests/train/test_compiled.py`` checks that separate processes train bit-identical models.

Compile time (cellbench, 15,073 genes, 2 threads): ~6.6 s with the on-disk caches warm became ~2.8 s
through two settings, applied while the step is compiled (``_compile_settings``; a test checks both):

* Python floats. The KL weight, which changes every step, enters as a 0-d tensor; every other float (the
  modules' own, such as batch norm's eps, and constant loss settings) is compiled in as a constant. Left
  to treat floats as symbols, the compiler traced the step, found that batch norm needs its eps as a
  number, and traced everything a second time.
* The autograd cache. The likelihood is a custom autograd function (:mod:`cellvi.distributions.
  softmax_counts`), which PyTorch's on-disk cache of traced forward and backward graphs skips unless
  allowed. Its cache key holds the function's traced forward and backward, so an edit of either is a
  cache miss (checked: changing the backward's arithmetic missed), never a stale graph.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from .optim import clear_grads


def _compile_settings() -> tuple:
    """The compiler settings under which the training step is traced (see the module docstring), as
    context managers to enter around every call (any call may recompile). Made once per
    :class:`CompiledLoss`: making them in every step cost ~0.14 ms, entering them ~0.013 ms."""
    import torch._dynamo.config
    import torch._functorch.config

    return (
        torch._dynamo.config.patch(specialize_float=True),
        torch._functorch.config.patch(autograd_cache_allow_custom_autograd_functions=True),
    )


class CompiledLoss:
    """``loss_fn`` compiled (dynamic shapes: the last minibatch may be smaller, with no recompilation).

    Call :meth:`step` instead of the loss: it runs the forward and backward passes, and if compiling
    or running the compiled code fails (no compiler, an unsupported operation) it warns once, switches
    to ``loss_fn`` for good and redoes the step eagerly, so an error of the loss itself is still raised.
    """

    def __init__(self, loss_fn: Callable) -> None:
        self.loss_fn = loss_fn
        self.compiled: Callable | None = torch.compile(loss_fn, dynamic=True)
        self.settings = _compile_settings()

    def step(
        self, optimizer: torch.optim.Optimizer, batch: dict, autocast_dtype: torch.dtype | None = None, **kwargs
    ) -> dict:
        """Forward and backward of one minibatch (gradients set, not yet applied). Returns the loss dict."""
        if self.compiled is not None:
            if isinstance(kwargs.get("kl_weight"), float):  # a tensor: a new value is no new constant
                kwargs = {**kwargs, "kl_weight": torch.tensor(kwargs["kl_weight"])}
            try:
                floats_as_constants, cache_custom_functions = self.settings
                with floats_as_constants, cache_custom_functions:
                    return forward_backward(self.compiled, optimizer, batch, autocast_dtype, **kwargs)
            except Exception as exc:  # noqa: BLE001 - any failure of the compiler; the eager step re-raises real errors
                warnings.warn(
                    f"torch.compile failed ({type(exc).__name__}: {str(exc)[:300]}); training continues "
                    "without compiling (pass fused_kernels=False to skip the attempt).",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self.compiled = None
        return forward_backward(self.loss_fn, optimizer, batch, autocast_dtype, **kwargs)


def forward_backward(
    loss_fn: Callable,
    optimizer: torch.optim.Optimizer,
    batch: dict,
    autocast_dtype: torch.dtype | None = None,
    **kwargs,
) -> dict:
    """The loss of one minibatch and its gradients (set, not yet applied). Returns the loss dict.

    ``autocast_dtype`` (torch.bfloat16 or None): run the forward pass under ``torch.autocast``, so that
    the matrix products take bfloat16 inputs (float32 accumulation, float32 weights and gradients);
    the modules return float32 from their layers, so the likelihood and the KL stay float32."""
    if autocast_dtype is None:
        out = loss_fn(batch, **kwargs)
    else:
        device = next(iter(optimizer.param_groups[0]["params"])).device.type
        with torch.autocast(device, dtype=autocast_dtype):
            out = loss_fn(batch, **kwargs)
    clear_grads(optimizer)
    out["loss"].backward()
    return out
