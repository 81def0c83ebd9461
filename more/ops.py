"""The Monarch multiply behind MoRe: delta(x) = P2 . BD2 . P1 . BD1 . pad(x), truncated to `out`.

w1 has shape (k, r, p) and w2 has shape (k, s, r) (the official blkdiag1 / blkdiag2 layout).
P1 sends feature f = j*r + i of the first factor to block f mod k, position f div k, of the second;
P2 sends output t of block c to index t*k + c.

Three ways to compute it, all equal:
- `monarch_multiply`: the fast path, two batched matrix products with a hand-written backward,
  registered as the custom op `torch.ops.more.monarch` (torch.compile, meta tensors and
  FlopCounterMode all see it);
- `monarch_reference`: torch.block_diag and explicit permutation matrices, for the tests;
- `monarch_dense`: the dense (out x in) update, for merging and for D2S projection checks.

On CUDA the same custom op can run the fused Triton kernels of `more/kernels/triton_monarch.py`
instead of the bmm products: see BACKENDS.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula


def _dims(x: Tensor, w1: Tensor, w2: Tensor) -> tuple[int, int, int, int, int]:
    k, r, p = w1.shape
    k2, s, r2 = w2.shape
    if (k2, r2) != (k, r):
        raise ValueError(f"w1 {tuple(w1.shape)} and w2 {tuple(w2.shape)} do not share nblocks and blk_r")
    if x.shape[-1] > k * p:
        raise ValueError(f"input has {x.shape[-1]} features but w1 {tuple(w1.shape)} covers only {k * p}")
    return k, r, p, s, x.shape[-1]


def _pad_last(t: Tensor, size: int) -> Tensor:
    """Zero-pad the last dimension to `size`; a no-op (no copy) when it already fits."""
    return t if t.shape[-1] == size else F.pad(t, (0, size - t.shape[-1]))


# Two ways to apply the second factor, both exact:
# - "blocks": a bmm over the k blocks, then P2 as a copy of the output (stride-k interleave);
# - "expanded": one matmul with w2 scattered into a (k*r x out) matrix that absorbs P1 and P2.
#   It writes y in place with no permuting copy, at k times the second factor's FLOPs; measured on
#   CPU (benchmarks/) it is the faster one while k*r stays small, which is MoRe's regime.
EXPANDED_MAX_KR = 128


def uses_expanded_second_factor(nblocks: int, blk_r: int) -> bool:
    return nblocks * blk_r <= EXPANDED_MAX_KR


def second_factor_matrix(w2: Tensor, out_features: int) -> Tensor:
    """P2 . BD2 . P1 as a (k*r x out) matrix acting on the first factor's output h[b, j*r + i].

    Row f = a*k + c holds w2[c, :, a] at columns t*k + c: zero elsewhere, k*r*s non-zeros.
    """
    k, s, r = w2.shape
    expanded = w2.new_zeros(r, k, s, k)  # [a, c, t, c']
    torch.diagonal(expanded, dim1=1, dim2=3).copy_(w2.permute(2, 1, 0))  # c' = c
    return expanded.view(r * k, s * k)[:, :out_features]


def _second_factor_grad(grad_expanded: Tensor, k: int, s: int, r: int) -> Tensor:
    """dw2 (k, s, r) from the gradient of second_factor_matrix: its block-diagonal entries."""
    padded = _pad_last(grad_expanded, s * k).view(r, k, s, k)
    return torch.diagonal(padded, dim1=1, dim2=3).permute(2, 1, 0).contiguous()


def _permute_p1(h: Tensor, k: int, r: int) -> Tensor:
    """h[b, j*r + i] -> g[c, b, a] with a*k + c = j*r + i: the second factor's (k, B, r) input."""
    return h.view(-1, r, k).permute(2, 0, 1).contiguous()


def _monarch_forward(x: Tensor, w1: Tensor, w2: Tensor, out_features: int) -> tuple[Tensor, Tensor]:
    k, r, p, s, _ = _dims(x, w1, w2)
    lead = x.shape[:-1]
    x2 = _pad_last(x.reshape(-1, x.shape[-1]), k * p)
    batch = x2.shape[0]
    # First factor: bmm reads x as a strided (k, B, p) view and writes h[b, j*r + i] in place.
    h = torch.empty(batch, k, r, dtype=x.dtype, device=x.device)
    torch.bmm(x2.view(batch, k, p).transpose(0, 1), w1.transpose(1, 2), out=h.transpose(0, 1))
    h = h.view(batch, k * r)
    if uses_expanded_second_factor(k, r):
        y = h @ second_factor_matrix(w2, out_features)
    else:
        y_blocks = torch.bmm(_permute_p1(h, k, r), w2.transpose(1, 2))  # (k, B, s): [c, b, t]
        y = y_blocks.permute(1, 2, 0).reshape(batch, s * k)  # P2: y[b, t*k + c]
        if s * k != out_features:
            y = y[:, :out_features].contiguous()
    return y.view(*lead, out_features), h


def _monarch_backward(
    dy: Tensor, x: Tensor, w1: Tensor, w2: Tensor, h: Tensor, need_dx: bool, need_dw1: bool, need_dw2: bool
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    k, r, p, s, in_features = _dims(x, w1, w2)
    lead = x.shape[:-1]
    batch = h.shape[0]
    dy2 = dy.reshape(batch, dy.shape[-1])
    dx = dw1 = dw2 = dh = None
    if uses_expanded_second_factor(k, r):
        if need_dw2:
            dw2 = _second_factor_grad(h.T @ dy2, k, s, r)
        if need_dx or need_dw1:
            dh = dy2 @ second_factor_matrix(w2, dy2.shape[-1]).T  # (B, k*r)
    else:
        dy_blocks = _pad_last(dy2, s * k).view(batch, s, k).permute(2, 0, 1).contiguous()  # inverse P2
        if need_dw2:
            dw2 = torch.bmm(dy_blocks.transpose(1, 2), _permute_p1(h, k, r))
        if need_dx or need_dw1:
            dg = torch.bmm(dy_blocks, w2)  # (k, B, r): [c, b, a]
            dh = dg.permute(1, 2, 0).reshape(batch, k * r)  # inverse P1
    if dh is not None:
        dh_blocks = dh.view(batch, k, r).transpose(0, 1)  # strided (k, B, r) view, read in place
        if need_dx:
            dx_padded = torch.empty(batch, k, p, dtype=x.dtype, device=x.device)
            torch.bmm(dh_blocks, w1, out=dx_padded.transpose(0, 1))
            dx = dx_padded.view(batch, k * p)
            if k * p != in_features:
                dx = dx[:, :in_features].contiguous()
            dx = dx.view(*lead, in_features)
        if need_dw1:
            x_blocks = _pad_last(x.reshape(batch, in_features), k * p).view(batch, k, p).transpose(0, 1)
            dw1 = torch.bmm(dh_blocks.transpose(1, 2), x_blocks)  # (k, r, p)
    return dx, dw1, dw2


def _tokens(shape) -> int:
    n = 1
    for d in shape[:-1]:
        n *= d
    return n


# Which implementation runs the custom ops: "bmm" (the products above), "triton" (the fused kernels of
# more/kernels/triton_monarch.py, CUDA only unless Triton's interpreter is on), or "auto": bmm on the CPU,
# and on CUDA whichever measured faster the first time this shape was seen (a table per shape kept by
# triton_monarch, see `dispatch_table()`). bmm when triton is not installed.
BACKENDS = ("auto", "bmm", "triton")


def _triton_kernels():
    """The Triton kernel module, imported on first use; None when triton is not installed."""
    try:
        from .kernels import triton_monarch
    except ImportError:
        return None
    return triton_monarch


def _uses_triton(backend: str, direction: str, x: Tensor, w1: Tensor, w2: Tensor, out_features: int,
                 needs: tuple = (), extra: tuple = ()) -> bool:
    if backend not in BACKENDS:
        raise ValueError(f"Unknown MoRe backend {backend!r}; choose one of {BACKENDS}.")
    if backend == "triton":
        if _triton_kernels() is None:
            raise ImportError("kernel='triton' needs the triton package: pip install 'more-harness[triton]'.")
        return True
    if backend == "bmm" or not x.is_cuda:
        return False
    kernels = _triton_kernels()
    return kernels is not None and kernels.triton_is_faster(direction, x, w1, w2, out_features, needs, extra)


@torch.library.custom_op("more::monarch", mutates_args=())
def _monarch_op(x: Tensor, w1: Tensor, w2: Tensor, out_features: int, backend: str = "auto") -> tuple[Tensor, Tensor]:
    """Returns (y, h): h (B, k*r) is the first factor's output, kept for the backward pass."""
    if _uses_triton(backend, "forward", x, w1, w2, out_features):
        return _triton_kernels().monarch_forward(x, w1, w2, out_features)
    return _monarch_forward(x, w1, w2, out_features)


@_monarch_op.register_fake
def _monarch_fake(x: Tensor, w1: Tensor, w2: Tensor, out_features: int, backend: str = "auto") -> tuple[Tensor, Tensor]:
    k, r, _, _, _ = _dims(x, w1, w2)
    return x.new_empty(*x.shape[:-1], out_features), x.new_empty(_tokens(x.shape), k * r)


@torch.library.custom_op("more::monarch_backward", mutates_args=())
def _monarch_backward_op(
    dy: Tensor, x: Tensor, w1: Tensor, w2: Tensor, h: Tensor, need_dx: bool, need_dw1: bool, need_dw2: bool,
    backend: str = "auto",
) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, dw1, dw2); a gradient that was not asked for comes back empty and is never computed."""
    needs = (need_dx, need_dw1, need_dw2)
    if _uses_triton(backend, "backward", x, w1, w2, dy.shape[-1], needs, extra=(dy, h)):
        grads = _triton_kernels().monarch_backward(dy, x, w1, w2, h, *needs)
    else:
        grads = _monarch_backward(dy, x, w1, w2, h, *needs)
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


# FLOP formulas count the Monarch product's own work, 2 * tokens * k * r * (p + s) forward, whichever
# way the second factor is executed: the expanded matmul's extra zeros show in time, not in FLOPs.
@register_flop_formula(torch.ops.more.monarch)
def _monarch_flops(x_shape, w1_shape, w2_shape, out_features, *args, out_shape=None, **kwargs) -> int:
    k, r, p = w1_shape
    return 2 * _tokens(x_shape) * k * r * (p + w2_shape[1])


@register_flop_formula(torch.ops.more.monarch_backward)
def _monarch_backward_flops(dy_shape, x_shape, w1_shape, w2_shape, h_shape, need_dx, need_dw1, need_dw2,
                            *args, out_shape=None, **kwargs) -> int:
    k, r, p = w1_shape
    per_product = 2 * _tokens(x_shape) * k * r  # times p (first factor) or s (second factor)
    s = w2_shape[1]
    flops = per_product * s * (int(need_dw2) + int(need_dx or need_dw1))
    return flops + per_product * p * (int(need_dx) + int(need_dw1))


def monarch_multiply(x: Tensor, w1: Tensor, w2: Tensor, out_features: int, backend: str = "auto") -> Tensor:
    """The fast path: y = delta(x), shape (..., out_features). `backend`: one of BACKENDS."""
    return torch.ops.more.monarch(x, w1, w2, out_features, backend)[0]


def permutation_p1(nblocks: int, blk_r: int, device=None) -> Tensor:
    """P1 as a (k*r x k*r) matrix: row c*r + a picks feature f = a*k + c."""
    k, r = nblocks, blk_r
    rows = torch.arange(k * r, device=device)
    cols = (rows % r) * k + rows // r
    return _permutation_matrix(rows, cols, k * r)


def permutation_p2(nblocks: int, out_blksz: int, device=None) -> Tensor:
    """P2 as a (k*s x k*s) matrix: row t*k + c picks output c*s + t of the second factor."""
    k, s = nblocks, out_blksz
    rows = torch.arange(k * s, device=device)
    cols = (rows % k) * s + rows // k
    return _permutation_matrix(rows, cols, k * s)


def _permutation_matrix(rows: Tensor, cols: Tensor, n: int) -> Tensor:
    m = torch.zeros(n, n, device=rows.device)
    m[rows, cols] = 1.0
    return m


def monarch_reference(x: Tensor, w1: Tensor, w2: Tensor, out_features: int) -> Tensor:
    """The plain path: dense block-diagonal matrices and explicit permutations; autograd does the rest."""
    k, r, p, s, _ = _dims(x, w1, w2)
    bd1 = torch.block_diag(*w1.unbind(0))  # (k*r, k*p)
    bd2 = torch.block_diag(*w2.unbind(0))  # (k*s, k*r)
    p1 = permutation_p1(k, r, x.device).to(w1.dtype)
    p2 = permutation_p2(k, s, x.device).to(w2.dtype)
    h = _pad_last(x, k * p) @ bd1.T @ p1.T
    return (h @ (p2 @ bd2).T)[..., :out_features]


def monarch_dense(w1: Tensor, w2: Tensor, in_features: int, out_features: int) -> Tensor:
    """The dense (out x in) update M, so that delta(x) = x @ M.T. Differentiable."""
    k, r, p = w1.shape
    s = w2.shape[1]
    bd1 = torch.block_diag(*w1.unbind(0))  # (k*r, k*p)
    rows_by_block = bd1.view(r, k, k * p).transpose(0, 1)  # P1 . BD1 grouped by second-factor block: (k, r, k*p)
    blocks = torch.bmm(w2, rows_by_block)  # (k, s, k*p): row t of block c
    return blocks.transpose(0, 1).reshape(s * k, k * p)[:out_features, :in_features]  # P2, then truncate


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
