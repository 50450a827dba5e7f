"""Fully connected layers that take categorical and continuous covariates.

A categorical covariate with ``k`` categories enters a linear layer as if its one-hot code were
concatenated to the input. Instead of building that one-hot matrix every step, each covariate owns a
weight table of shape ``(k, n_out)`` whose row for the cell's category is added to the layer's output:
the same function, without the concatenation. It also makes architecture surgery for query mapping
simple: new categories are new rows appended to the table (see :meth:`CovariateInjection.extend`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


def float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` as float32 (itself when it already is): the layers may run in bfloat16 under autocast
    (``train(precision="bf16-mixed")``), the likelihoods, KL terms and losses never do."""
    return x.float()


def select_rows(table: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """``table[codes]``, (len(codes), table.shape[1]). Under ``torch.compile`` as ``one_hot(codes) @ table``:
    the gradient of a gather is a scatter-add, which compiled code runs with atomic adds (a different
    order, so different bits, in every run); a matrix product's gradient has none."""
    if torch.compiler.is_compiling():
        return F.one_hot(codes, table.shape[0]).to(table.dtype) @ table
    return table[codes]


def _transposed_weight(linear: nn.Linear) -> torch.Tensor:
    """``linear.weight.t()`` made contiguous, (n_in, n_out): the sparse first layer sums its rows.
    Without gradients (inference) the copy is kept until the weight changes (in-place updates bump its
    version counter; moving it changes its storage): ~25% of the sparse first layer's time."""
    w = linear.weight
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        return w.t().contiguous()
    key = (w._version, w.data_ptr(), w.device, w.dtype)
    cached = linear.__dict__.get("_cellvi_weight_t")
    if cached is None or cached[0] is not w or cached[1] != key:  # the same parameter, unchanged
        cached = (w, key, w.detach().t().contiguous())
        linear.__dict__["_cellvi_weight_t"] = cached
    return cached[2]


def _sparse_linear(x: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """``linear(x)`` for a sparse CSR ``x`` (n_cells, n_in), as (n_cells, n_out): each cell's output is
    the bias plus the rows of the transposed weight at its non-zero columns, weighted by their values,
    which is what ``embedding_bag`` computes. Latents came out 1.3-1.5x faster than with ``torch.addmm``'s
    sparse-times-dense product (MKL; bench/results/sparse_first_layer.md, AMD EPYC, 2 threads), which
    was itself ~3x faster than densifying at 10% non-zeros. Inference only (no gradient to ``x``)."""
    return (
        torch.nn.functional.embedding_bag(
            x.col_indices(),
            _transposed_weight(linear),
            x.crow_indices(),
            mode="sum",
            per_sample_weights=x.values(),
            include_last_offset=True,
        )
        + linear.bias
    )


class SparseRows(NamedTuple):
    """A minibatch's encoder input (n_cells, n_genes) held by its non-zeros, twice: by row (CSR:
    ``indptr`` (n_cells + 1,), ``cols``, ``values``) for the forward pass, and by column (CSC: ``colptr``
    (n_genes + 1,), ``rows``, ``col_values``) for the weight's gradient. Indices share one integer type."""

    indptr: torch.Tensor
    cols: torch.Tensor
    values: torch.Tensor
    colptr: torch.Tensor
    rows: torch.Tensor
    col_values: torch.Tensor


class _SparseLinearWeight(torch.autograd.Function):
    """``x @ weight.T`` for ``x`` given as :class:`SparseRows`, with the gradient of ``weight`` only.

    Forward: each cell sums the transposed weight's rows at its non-zero genes (``embedding_bag``).
    Backward: the weight's gradient ``x.T @ grad`` is the same sum with the roles swapped: each gene sums
    the incoming gradient's rows at its non-zero cells, from the by-column copy of ``x``. (``embedding_bag``'s
    own backward pass scatters every non-zero x 128 values and was ~4x slower than the dense product
    at 128 x 20,000; this one costs about what the forward pass does.)"""

    @staticmethod
    def forward(ctx, weight, indptr, cols, values, colptr, rows, col_values):
        ctx.save_for_backward(colptr, rows, col_values)
        w_t = weight.t().contiguous()  # (n_in, n_out): the rows to sum
        return F.embedding_bag(cols, w_t, indptr, mode="sum", per_sample_weights=values, include_last_offset=True)

    @staticmethod
    def backward(ctx, grad):
        colptr, rows, col_values = ctx.saved_tensors
        g_t = F.embedding_bag(
            rows, grad.contiguous(), colptr, mode="sum", per_sample_weights=col_values, include_last_offset=True
        )
        return g_t.t(), None, None, None, None, None, None


def sparse_rows_linear(x: SparseRows, linear: nn.Linear) -> torch.Tensor:
    """``linear(x)`` for a minibatch given by its non-zeros (training: gradients reach the weight and bias,
    none reaches ``x``), (n_cells, n_out)."""
    return _SparseLinearWeight.apply(linear.weight, *x) + linear.bias


class CovariateInjection(nn.Module):
    """Adds the covariates' contribution to a linear layer's output.

    Parameters
    ----------
    n_out
        Width of the layer the covariates are added to.
    n_cats_per_cov
        Number of categories of each categorical covariate.
    n_continuous
        Number of continuous covariates.
    """

    def __init__(
        self, n_out: int, n_cats_per_cov: Sequence[int] = (), n_continuous: int = 0, init_bound: float = 0.1
    ) -> None:
        super().__init__()
        self.tables = nn.ParameterList(
            [nn.Parameter(torch.empty(k, n_out).uniform_(-init_bound, init_bound)) for k in n_cats_per_cov]
        )
        self.continuous = nn.Linear(n_continuous, n_out, bias=False) if n_continuous > 0 else None
        if self.continuous is not None:
            nn.init.uniform_(self.continuous.weight, -init_bound, init_bound)
        self._frozen_rows: list[int] = [0] * len(self.tables)

    def forward(self, cat_codes: torch.Tensor | None, cont: torch.Tensor | None) -> torch.Tensor | float:
        """cat_codes: (n_cells, n_categorical) int64; cont: (n_cells, n_continuous). Returns (n_cells, n_out)."""
        out: torch.Tensor | float = 0.0
        for i, table in enumerate(self.tables):
            out = out + select_rows(table, cat_codes[:, i])
        if self.continuous is not None:
            out = out + self.continuous(cont)
        return out

    def extend(self, n_new_per_cov: Sequence[int], freeze_existing: bool) -> None:
        """Append rows for new categories; with ``freeze_existing`` the old rows get zero gradient.

        A table with no new rows is frozen whole (``requires_grad=False``, so no optimiser sees it). The
        old rows of a grown table get a zero gradient from a hook: with Adam their moments stay zero and
        so do their updates, but only without weight decay (L2 is added to the gradient after the
        hook), so train a query with ``weight_decay=0``.
        """
        for i, n_new in enumerate(n_new_per_cov):
            old = self.tables[i]
            if n_new > 0:
                new_rows = torch.zeros(n_new, old.shape[1], dtype=old.dtype, device=old.device)
                self.tables[i] = nn.Parameter(torch.cat([old.detach(), new_rows], dim=0))
                if freeze_existing:
                    self.tables[i].register_hook(_zero_first_rows(old.shape[0]))
            elif freeze_existing:
                old.requires_grad_(False)


def _zero_first_rows(n_rows: int):
    def hook(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad[:n_rows] = 0
        return grad

    return hook


class FCLayers(nn.Module):
    """A stack of ``Linear -> BatchNorm/LayerNorm -> ReLU -> Dropout`` layers with covariates injected.

    Parameters
    ----------
    n_in, n_out
        Input and output widths.
    n_cats_per_cov
        Categories of each categorical covariate (batch first, then any others).
    n_continuous
        Number of continuous covariates.
    n_layers, n_hidden
        Depth and width of the hidden layers.
    dropout_rate
        Dropout after each layer.
    inject_covariates
        Covariates enter every layer when True, only the first layer when False.
    use_batch_norm, use_layer_norm
        Normalisation after each linear map.
    """

    def __init__(
        self,
        n_in: int,
        n_out: int,
        n_cats_per_cov: Sequence[int] = (),
        n_continuous: int = 0,
        n_layers: int = 1,
        n_hidden: int = 128,
        dropout_rate: float = 0.1,
        inject_covariates: bool = True,
        use_batch_norm: bool = True,
        use_layer_norm: bool = False,
    ) -> None:
        super().__init__()
        widths = [n_in] + [n_hidden] * (n_layers - 1) + [n_out]
        self.linears = nn.ModuleList()
        self.injections = nn.ModuleList()
        self.post = nn.ModuleList()
        for i, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:])):
            injected = i == 0 or inject_covariates
            # initialise as one linear map over [input, one-hot covariates] would be (PyTorch's default)
            fan_in = w_in + (sum(n_cats_per_cov) + n_continuous if injected else 0)
            bound = 1.0 / fan_in**0.5
            linear = nn.Linear(w_in, w_out)
            nn.init.uniform_(linear.weight, -bound, bound)
            nn.init.uniform_(linear.bias, -bound, bound)
            self.linears.append(linear)
            if injected:
                self.injections.append(CovariateInjection(w_out, n_cats_per_cov, n_continuous, bound))
            else:
                self.injections.append(CovariateInjection(w_out))
            norm: list[nn.Module] = []
            if use_batch_norm:
                norm.append(nn.BatchNorm1d(w_out, momentum=0.01, eps=1e-3))
            if use_layer_norm:
                norm.append(nn.LayerNorm(w_out, elementwise_affine=False))
            self.post.append(nn.Sequential(*norm, nn.ReLU(), nn.Dropout(dropout_rate)))

    def forward(
        self, x: torch.Tensor, cat_codes: torch.Tensor | None = None, cont: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: (n_cells, n_in), dense, sparse CSR or :class:`SparseRows` (no gradient to x for either of
        these two). Returns (n_cells, n_out)."""
        for linear, inject, post in zip(self.linears, self.injections, self.post):
            if isinstance(x, SparseRows):
                h = sparse_rows_linear(x, linear)
            elif x.layout == torch.sparse_csr:
                h = _sparse_linear(x, linear)
            else:
                h = linear(x)
            x = post(h + inject(cat_codes, cont))
        return x

    def extend_categories(self, n_new_per_cov: Sequence[int], freeze_existing: bool) -> None:
        """Grow every covariate table by the given number of new categories (query mapping)."""
        for inject in self.injections:
            if len(inject.tables):
                inject.extend(n_new_per_cov, freeze_existing)
