"""The training loss compiled with ``torch.compile``, falling back to eager execution.

Eagerly, each element-wise operation of a training step is its own pass over memory and its own
dispatch; at batch 128 on a CPU these small operations cost more than the matrix products. Compiled,
the forward and backward passes become a few fused loops: ~1.4x faster steps on a 2-core CPU (see
bench/README.md). Compilation costs ~15 s once per process (~6 s with the on-disk cache warm) and needs
a C++ compiler on CPU, which is why ``train(fused_kernels=None)`` compiles only long runs.

Only training steps are compiled; validation and inference stay eager, so that switching the module
between train and eval mode never triggers a recompilation.

Compiled steps run with ``torch.use_deterministic_algorithms(True, warn_only=True)``: the generated
backward kernels otherwise accumulate with atomics, and the same seed gave different bits in every
process (measured; with the flag, identical bits, at no measurable cost on CPU). The flag is restored
after each step.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator

import torch


class CompiledLoss:
    """``loss_fn`` compiled (dynamic shapes: the last minibatch may be smaller, with no recompilation).

    Call :meth:`step` instead of the loss: it runs the forward and backward passes, and if compiling
    or running the compiled code fails (no compiler, an unsupported operation) it warns once, switches
    to ``loss_fn`` for good and redoes the step eagerly, so an error of the loss itself is still raised.
    """

    def __init__(self, loss_fn: Callable) -> None:
        self.loss_fn = loss_fn
        self.compiled: Callable | None = torch.compile(loss_fn, dynamic=True)

    def step(self, optimizer: torch.optim.Optimizer, batch: dict, **kwargs) -> dict:
        """Forward and backward of one minibatch (gradients set, not yet applied). Returns the loss dict."""
        if self.compiled is not None:
            try:
                with deterministic():
                    return forward_backward(self.compiled, optimizer, batch, **kwargs)
            except Exception as exc:  # noqa: BLE001 - any failure of the compiler; the eager step re-raises real errors
                warnings.warn(
                    f"torch.compile failed ({type(exc).__name__}: {str(exc)[:300]}); training continues "
                    "without compiling (pass fused_kernels=False to skip the attempt).",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self.compiled = None
        return forward_backward(self.loss_fn, optimizer, batch, **kwargs)


def forward_backward(loss_fn: Callable, optimizer: torch.optim.Optimizer, batch: dict, **kwargs) -> dict:
    """The loss of one minibatch and its gradients (set, not yet applied). Returns the loss dict."""
    out = loss_fn(batch, **kwargs)
    optimizer.zero_grad(set_to_none=True)
    out["loss"].backward()
    return out


@contextlib.contextmanager
def deterministic() -> Iterator[None]:
    """Deterministic algorithms (warnings, not errors, where an operation has none) for the block."""
    was = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was, warn_only=was_warn_only)
