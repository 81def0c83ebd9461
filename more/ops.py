"""The Monarch multiply behind MoRe: delta(x) = P2 . BD2 . P1 . BD1 . pad(x), truncated to `out`.

w1 has shape (k, r, p) and w2 has shape (k, s, r) (the official blkdiag1 / blkdiag2 layout).
P1 sends feature f = j*r + i of the first factor to block f mod k, position f div k, of the second;
P2 sends output t of block c to index t*k + c.

Three ways to compute it, all equal:
- `monarch_multiply`: the fast path, registered as the custom op `torch.ops.more.monarch` with a
  hand-written backward (torch.compile, meta tensors and FlopCounterMode all see it). The op asks
  `more.dispatch` which implementation runs: the bmm products of `more.bmm`, or the fused Triton kernels of
  `more/kernels/triton_monarch.py` (see `more.dispatch.BACKENDS`);
- `monarch_reference` (`more.reference`): torch.block_diag and explicit permutation matrices, for the tests;
- `monarch_dense` (`more.reference`): the dense (out x in) update, for merging and for D2S projection checks.
"""
from __future__ import annotations

import functools

import torch
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode
from torch.utils.flop_counter import register_flop_formula

from . import dispatch
from .bmm import factor_sizes
from .reference import monarch_dense, monarch_reference, permutation_p1, permutation_p2  # noqa: F401 (re-exported)
from .shapes import monarch_flops, token_count


@torch.library.custom_op("more::monarch", mutates_args=())
def _monarch_op(x: Tensor, w1: Tensor, w2: Tensor, out_features: int, backend: str = "auto") -> tuple[Tensor, Tensor]:
    """Returns (y, h): h (B, k*r) is the first factor's output, kept for the backward pass."""
    return dispatch.forward(x, w1, w2, out_features, backend)


@_monarch_op.register_fake
def _monarch_fake(x: Tensor, w1: Tensor, w2: Tensor, out_features: int, backend: str = "auto") -> tuple[Tensor, Tensor]:
    k, r, _, _, _ = factor_sizes(x, w1, w2)
    return x.new_empty(*x.shape[:-1], out_features), x.new_empty(token_count(x.shape), k * r)


@torch.library.custom_op("more::monarch_backward", mutates_args=())
def _monarch_backward_op(
    dy: Tensor, x: Tensor, w1: Tensor, w2: Tensor, h: Tensor, need_dx: bool, need_dw1: bool, need_dw2: bool,
    backend: str = "auto",
) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, dw1, dw2); a gradient that was not asked for comes back empty and is never computed."""
    grads = dispatch.backward(dy, x, w1, w2, h, need_dx, need_dw1, need_dw2, backend)
    return tuple(g if g is not None else x.new_empty(0) for g in grads)


@_monarch_backward_op.register_fake
def _monarch_backward_fake(dy, x, w1, w2, h, need_dx, need_dw1, need_dw2, backend="auto"):
    return tuple(t.new_empty(t.shape) if needed else x.new_empty(0) for t, needed in ((x, need_dx), (w1, need_dw1), (w2, need_dw2)))


def _setup_context(ctx, inputs, output) -> None:
    x, w1, w2, _, ctx.backend = inputs
    ctx.save_for_backward(x, w1, w2, output[1])


def _backward(ctx, dy: Tensor, _dh: Tensor):
    x, w1, w2, h = ctx.saved_tensors
    need_dx, need_dw1, need_dw2 = ctx.needs_input_grad[:3]
    dx, dw1, dw2 = torch.ops.more.monarch_backward(
        dy.contiguous(), x, w1, w2, h, need_dx, need_dw1, need_dw2, ctx.backend
    )
    return (dx if need_dx else None), (dw1 if need_dw1 else None), (dw2 if need_dw2 else None), None, None


_monarch_op.register_autograd(_backward, setup_context=_setup_context)


# FLOP formulas count the Monarch product's own work (more.shapes.monarch_flops), whichever way it runs.
@register_flop_formula(torch.ops.more.monarch)
def _monarch_flops(x_shape, w1_shape, w2_shape, out_features, *args, out_shape=None, **kwargs) -> int:
    k, r, p = w1_shape
    return monarch_flops(token_count(x_shape), k, r, p, w2_shape[1])


@register_flop_formula(torch.ops.more.monarch_backward)
def _monarch_backward_flops(dy_shape, x_shape, w1_shape, w2_shape, h_shape, need_dx, need_dw1, need_dw2,
                            *args, out_shape=None, **kwargs) -> int:
    k, r, p = w1_shape
    return monarch_flops(token_count(x_shape), k, r, p, w2_shape[1],
                         first=int(need_dx) + int(need_dw1), second=int(need_dw2) + int(need_dx or need_dw1))


class _EagerMonarch(torch.autograd.Function):
    """The custom op's forward and backward (the same `more.dispatch` calls) as a plain autograd.Function.

    In eager mode a custom op pays for its dispatch and its Python autograd wrappers, twice per training step
    (the op, then its backward op): about 0.3 ms a layer on the CPU, more than the products themselves at
    MoRe's sizes. Eager calls on plain tensors therefore take this path; see `monarch_multiply`.
    """

    @staticmethod
    def forward(ctx, x: Tensor, w1: Tensor, w2: Tensor, out_features: int, backend: str) -> Tensor:
        y, h = dispatch.forward(x, w1, w2, out_features, backend)
        ctx.save_for_backward(x, w1, w2, h)
        ctx.backend = backend
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, w1, w2, h = ctx.saved_tensors
        grads = dispatch.backward(dy.contiguous(), x, w1, w2, h, *ctx.needs_input_grad[:3], ctx.backend)
        return (*grads, None, None)


def runs_op(x: Tensor) -> bool:
    """Whether a call must go through the custom op: under torch.compile (one graph node with a fake kernel),
    under a dispatch mode (FlopCounterMode counts the op with its formula; FakeTensorMode), under torch.jit
    tracing (fvcore counts the op by name), and for tensor subclasses and meta tensors. Plain eager tensors
    take `_EagerMonarch`, the same computation."""
    return (torch.compiler.is_compiling() or type(x) is not Tensor or x.is_meta or torch.jit.is_tracing()
            or _get_current_dispatch_mode() is not None)


def monarch_multiply(x: Tensor, w1: Tensor, w2: Tensor, out_features: int, backend: str = "auto") -> Tensor:
    """The fast path: y = delta(x), shape (..., out_features). `backend`: one of more.dispatch.BACKENDS."""
    if runs_op(x):
        return torch.ops.more.monarch(x, w1, w2, out_features, backend)[0]
    return _EagerMonarch.apply(x, w1, w2, out_features, backend)


KERNELS = {
    "auto": monarch_multiply,
    "bmm": functools.partial(monarch_multiply, backend="bmm"),
    "triton": functools.partial(monarch_multiply, backend="triton"),
    "reference": monarch_reference,
}


def monarch_kernel(name: str):
    """The multiply behind a config's `kernel` field.

    "auto", "bmm" and "triton" all run the custom op `more::monarch` (same FLOP formula, same backward),
    differing only in its backend; "reference" is the plain path.
    """
    if name not in KERNELS:
        raise ValueError(f"Unknown MoRe kernel {name!r}; choose one of {sorted(KERNELS)}.")
    return KERNELS[name]
