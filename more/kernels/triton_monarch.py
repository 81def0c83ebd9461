"""Fused Triton kernels for the Monarch multiply y = P2 . BD2 . P1 . BD1 . pad(x), truncated to `out`.

Notation as in `more.ops`: x (B, in), w1 (k, r, p), w2 (k, s, r), h[b, j*r + i] the first factor's output.

Forward, one launch, one program per tile of BLOCK_ROWS tokens:
1. first factor, block j at a time: h[b, j*r + i] = sum_q x[b, j*p + q] w1[j, i, q] (2D tl.dot, the input
   zero-padded by masked loads); each x element is read once. The tile of h is stored to global memory.
2. a barrier, then the second factor, GROUP blocks c at a time as one batched (3D) tl.dot. P1 is the load
   address: g[c, b, a] = h[b, a*k + c], read back from the tile this program just wrote (it is still in
   L1/L2). P2 is the store address: out[c, b, t] goes to y[b, t*k + c], masked to t*k + c < out; each
   y element is written once.

h goes through memory rather than staying in registers, a deliberate choice: it is small (k*r values
per token against `out` for y; 16 against 4096 at the paper's default), the backward needs it for dw2
anyway (so it is stored, not recomputed: recomputing would read x again), and P1 is a general permutation
that Triton applies to register tensors only by power-of-two reshapes or tl.gather, both of which need the
whole (BLOCK_ROWS x k*r) tile of h in registers; k*r reaches 64*64. Read back by address, P1 works for every
k and r, non-powers of two included, with registers bounded by the tile sizes below rather than by k*r.

Backward, dh and dx in one launch, the forward's mirror: dg[c, b, a] = sum_t dy[b, t*k + c] w2[c, t, a]
(3D tl.dot; P2 inverse in the dy load address), stored as dh[b, a*k + c] (P1 inverse in the store address);
then, when dx is asked for, a barrier and dx[b, j*p + q] = sum_i dh[b, j*r + i] w1[j, i, q]. dh is stored
because dw1 needs it. The weight gradients are reductions over all tokens into small tensors; they run as
cuBLAS products (`dw1 = dh_blocks^T @ x_blocks` on strided views, dw2 as in `more.ops`), which already
split the token reduction across the GPU; a Triton version would need atomics or a second pass for that.

tl.dot needs each dimension >= 16: r is padded inside the kernels to BLOCK_R >= 16 (masked loads give
zeros), so are the tile widths. Accumulation is fp32 for every input dtype; outputs, h and dh are stored in
the input dtype, as the bmm path does.

Which calls run these kernels, and at which of `candidate_tiles`, is decided by `more.dispatch`; this module
only launches them. The weight-gradient products come from `more.bmm`.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..bmm import bmm_backward, first_factor_weight_grad

# Upper bound on the elements of each register tile; it sets the group and tile sizes below.
TILE_ELEMENTS = 8192


@triton.jit(do_not_specialize=["rows", "blk_r"])
def _monarch_forward_kernel(
    x_ptr, w1_ptr, w2_ptr, h_ptr, y_ptr,
    rows, in_features, out_features, nblocks, blk_r, in_blksz, out_blksz,
    BLOCK_ROWS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_IN: tl.constexpr, BLOCK_OUT: tl.constexpr,
    GROUP: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    row = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_ok = row < rows
    row = row.to(tl.int64)  # B * in can pass 2**31
    features = nblocks * blk_r
    i = tl.arange(0, BLOCK_R)
    q = tl.arange(0, BLOCK_IN)

    # First factor, one block at a time: h[b, j*r + i] = sum_q x[b, j*p + q] w1[j, i, q].
    for j in range(nblocks):
        acc = tl.zeros((BLOCK_ROWS, BLOCK_R), dtype=tl.float32)
        for q0 in range(0, in_blksz, BLOCK_IN):
            col = j * in_blksz + q0 + q
            col_ok = (q0 + q < in_blksz) & (col < in_features)  # zero-pads x past in_features
            x_tile = tl.load(x_ptr + row[:, None] * in_features + col[None, :],
                             mask=row_ok[:, None] & col_ok[None, :], other=0.0)
            w1_tile = tl.load(w1_ptr + (j * blk_r + i[None, :]) * in_blksz + q0 + q[:, None],  # (BLOCK_IN, BLOCK_R)
                              mask=(i[None, :] < blk_r) & (q0 + q[:, None] < in_blksz), other=0.0)
            acc = tl.dot(x_tile, w1_tile, acc, input_precision=DOT_PRECISION)
        tl.store(h_ptr + row[:, None] * features + j * blk_r + i[None, :], acc.to(h_ptr.dtype.element_ty),
                 mask=row_ok[:, None] & (i[None, :] < blk_r))

    # All threads of the program must have stored their part of h before any reads it permuted.
    tl.debug_barrier()

    # Second factor, GROUP blocks at a time: out[c, b, t] = sum_a g[c, b, a] w2[c, t, a].
    rows3 = row[None, :, None]
    rows3_ok = row_ok[None, :, None]
    a_last = tl.arange(0, BLOCK_R)[None, None, :]
    a_mid = tl.arange(0, BLOCK_R)[None, :, None]
    t_last = tl.arange(0, BLOCK_OUT)[None, None, :]
    for c0 in range(0, nblocks, GROUP):
        c = c0 + tl.arange(0, GROUP)[:, None, None]
        c_ok = c < nblocks
        # P1 as an address: g[c, b, a] = h[b, a*k + c].
        g = tl.load(h_ptr + rows3 * features + a_last * nblocks + c,
                    mask=rows3_ok & c_ok & (a_last < blk_r), other=0.0)  # (GROUP, BLOCK_ROWS, BLOCK_R)
        for t0 in range(0, out_blksz, BLOCK_OUT):
            t = t0 + t_last
            w2_tile = tl.load(w2_ptr + (c * out_blksz + t) * blk_r + a_mid,
                              mask=c_ok & (t < out_blksz) & (a_mid < blk_r), other=0.0)  # (GROUP, BLOCK_R, BLOCK_OUT)
            out = tl.dot(g, w2_tile, input_precision=DOT_PRECISION)  # (GROUP, BLOCK_ROWS, BLOCK_OUT)
            # P2 as an address: out[c, b, t] -> y[b, t*k + c], truncated to out_features.
            col = t * nblocks + c
            tl.store(y_ptr + rows3 * out_features + col, out.to(y_ptr.dtype.element_ty),
                     mask=rows3_ok & c_ok & (col < out_features))


@triton.jit(do_not_specialize=["rows", "blk_r"])
def _monarch_backward_input_kernel(
    dy_ptr, w1_ptr, w2_ptr, dh_ptr, dx_ptr,
    rows, in_features, out_features, nblocks, blk_r, in_blksz, out_blksz,
    COMPUTE_DX: tl.constexpr,
    BLOCK_ROWS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_IN: tl.constexpr, BLOCK_OUT: tl.constexpr,
    GROUP: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    row = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_ok = row < rows
    row = row.to(tl.int64)
    features = nblocks * blk_r

    # Second factor transposed, GROUP blocks at a time: dg[c, b, a] = sum_t dy[b, t*k + c] w2[c, t, a].
    rows3 = row[None, :, None]
    rows3_ok = row_ok[None, :, None]
    a_last = tl.arange(0, BLOCK_R)[None, None, :]
    t_last = tl.arange(0, BLOCK_OUT)[None, None, :]
    t_mid = tl.arange(0, BLOCK_OUT)[None, :, None]
    for c0 in range(0, nblocks, GROUP):
        c = c0 + tl.arange(0, GROUP)[:, None, None]
        c_ok = c < nblocks
        acc = tl.zeros((GROUP, BLOCK_ROWS, BLOCK_R), dtype=tl.float32)
        for t0 in range(0, out_blksz, BLOCK_OUT):
            col = (t0 + t_last) * nblocks + c  # P2 inverse as an address; dy is zero past out_features
            dy_tile = tl.load(dy_ptr + rows3 * out_features + col,
                              mask=rows3_ok & c_ok & (col < out_features), other=0.0)  # (GROUP, BLOCK_ROWS, BLOCK_OUT)
            w2_tile = tl.load(w2_ptr + (c * out_blksz + t0 + t_mid) * blk_r + a_last,  # (GROUP, BLOCK_OUT, BLOCK_R)
                              mask=c_ok & (t0 + t_mid < out_blksz) & (a_last < blk_r), other=0.0)
            acc = tl.dot(dy_tile, w2_tile, acc, input_precision=DOT_PRECISION)
        # P1 inverse as an address: dh[b, a*k + c] = dg[c, b, a].
        tl.store(dh_ptr + rows3 * features + a_last * nblocks + c, acc.to(dh_ptr.dtype.element_ty),
                 mask=rows3_ok & c_ok & (a_last < blk_r))

    if COMPUTE_DX:
        tl.debug_barrier()  # dh of this tile complete before it is read block by block
        i = tl.arange(0, BLOCK_R)
        q = tl.arange(0, BLOCK_IN)
        # First factor transposed: dx[b, j*p + q] = sum_i dh[b, j*r + i] w1[j, i, q].
        for j in range(nblocks):
            dh_j = tl.load(dh_ptr + row[:, None] * features + j * blk_r + i[None, :],
                           mask=row_ok[:, None] & (i[None, :] < blk_r), other=0.0)  # (BLOCK_ROWS, BLOCK_R)
            for q0 in range(0, in_blksz, BLOCK_IN):
                w1_tile = tl.load(w1_ptr + (j * blk_r + i[:, None]) * in_blksz + q0 + q[None, :],  # (BLOCK_R, BLOCK_IN)
                                  mask=(i[:, None] < blk_r) & (q0 + q[None, :] < in_blksz), other=0.0)
                dx_tile = tl.dot(dh_j, w1_tile, input_precision=DOT_PRECISION)
                col = j * in_blksz + q0 + q
                col_ok = (q0 + q < in_blksz) & (col < in_features)  # padded inputs have no gradient
                tl.store(dx_ptr + row[:, None] * in_features + col[None, :], dx_tile.to(dx_ptr.dtype.element_ty),
                         mask=row_ok[:, None] & col_ok[None, :])


# ---------------------------------------------------------------------------------------------------
# Tile sizes


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


@dataclass(frozen=True)
class Tiles:
    """Compile-time tile sizes of both kernels (all powers of two; every tl.dot dimension >= 16)."""

    block_rows: int  # tokens per program
    block_r: int  # blk_r padded for tl.dot
    block_in: int  # input features per first-factor step
    block_out: int  # positions t per second-factor step
    group: int  # second-factor blocks per batched dot
    num_warps: int

    def kernel_args(self) -> dict:
        return dict(BLOCK_ROWS=self.block_rows, BLOCK_R=self.block_r, BLOCK_IN=self.block_in,
                    BLOCK_OUT=self.block_out, GROUP=self.group, num_warps=self.num_warps)


def plan_tiles(nblocks: int, blk_r: int, in_blksz: int, out_blksz: int, block_rows: int = 32,
               num_warps: int = 4) -> Tiles:
    """Tiles that keep each register tile under TILE_ELEMENTS elements."""
    block_r = max(16, _pow2(blk_r))
    # Up to 16 blocks c per dot: in bf16 that is 32 contiguous bytes of y per (token, t), one memory sector.
    group = min(_pow2(nblocks), 16)
    while group > 1 and (group * block_rows * block_r > TILE_ELEMENTS or group * block_r * 16 > TILE_ELEMENTS):
        group //= 2
    block_out = min(_pow2(out_blksz), 64, TILE_ELEMENTS // (group * block_rows), TILE_ELEMENTS // (group * block_r))
    block_in = min(_pow2(in_blksz), 128, TILE_ELEMENTS // block_rows, TILE_ELEMENTS // block_r)
    return Tiles(block_rows, block_r, max(16, block_in), max(16, block_out), group, num_warps)


# (block_rows, num_warps) that more.dispatch tries on first use of a shape on CUDA; it keeps the fastest
# that passes its check. The first is the default where nothing is measured.
TUNING_CANDIDATES = ((32, 4), (16, 4), (64, 8))


def candidate_tiles(nblocks: int, blk_r: int, in_blksz: int, out_blksz: int) -> list[Tiles]:
    """Every tiling the dispatcher may choose for these sizes."""
    return [plan_tiles(nblocks, blk_r, in_blksz, out_blksz, rows, warps) for rows, warps in TUNING_CANDIDATES]


def default_tiles(nblocks: int, blk_r: int, in_blksz: int, out_blksz: int) -> Tiles:
    return candidate_tiles(nblocks, blk_r, in_blksz, out_blksz)[0]


# ---------------------------------------------------------------------------------------------------
# Launchers


def _interpreting() -> bool:
    """Whether the kernels were built for Triton's CPU interpreter (TRITON_INTERPRET=1 before triton's import)."""
    return not isinstance(_monarch_forward_kernel, triton.runtime.JITFunction)


def check_device(x: Tensor) -> None:
    """The kernels run on CUDA tensors, or anywhere under Triton's interpreter."""
    if not (x.is_cuda or _interpreting()):
        raise RuntimeError(
            "The MoRe Triton kernel needs CUDA tensors (got a tensor on "
            f"{x.device}); use kernel='bmm' or 'auto' elsewhere, or set TRITON_INTERPRET=1 before triton "
            "is imported to run it on the CPU through Triton's interpreter (slow, for tests)."
        )


def _check_inputs(x: Tensor, w1: Tensor, w2: Tensor) -> None:
    check_device(x)
    if not (x.dtype == w1.dtype == w2.dtype):
        raise TypeError(f"x, w1 and w2 must share a dtype, got {x.dtype}, {w1.dtype}, {w2.dtype}")


def _dot_precision(dtype: torch.dtype) -> str:
    """fp32 follows torch's own matmul setting, so that the kernel agrees with the bmm path; for 16-bit
    inputs the setting is ignored and "tf32" is Triton's default."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"


def _on_device_of(x: Tensor):
    """Triton launches on the current CUDA device: make it x's (a no-op on the CPU interpreter)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _launch_sizes(x: Tensor, w1: Tensor, w2: Tensor) -> tuple[int, int, int, int, int, int]:
    """(rows, in_features, k, r, p, s): the kernels' integer arguments."""
    k, r, p = w1.shape
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    return rows, x.shape[-1], k, r, p, w2.shape[1]


def monarch_forward(x: Tensor, w1: Tensor, w2: Tensor, out_features: int,
                    tiles: Tiles) -> tuple[Tensor, Tensor]:
    """(y, h) as the custom op `more::monarch` returns them, from one kernel launch at `tiles`."""
    _check_inputs(x, w1, w2)
    rows, in_features, k, r, p, s = _launch_sizes(x, w1, w2)
    x2 = x.reshape(rows, in_features).contiguous()
    # h is always stored: the backward needs it (dw2), and the second factor reads it back permuted.
    h = torch.empty(rows, k * r, dtype=x.dtype, device=x.device)
    y = torch.empty(rows, out_features, dtype=x.dtype, device=x.device)
    if rows:
        grid = (triton.cdiv(rows, tiles.block_rows),)
        with _on_device_of(x):
            _monarch_forward_kernel[grid](
                x2, w1.contiguous(), w2.contiguous(), h, y, rows, in_features, out_features, k, r, p, s,
                DOT_PRECISION=_dot_precision(x.dtype), **tiles.kernel_args(),
            )
    return y.view(*x.shape[:-1], out_features), h


def monarch_backward(
    dy: Tensor, x: Tensor, w1: Tensor, w2: Tensor, h: Tensor, need_dx: bool, need_dw1: bool, need_dw2: bool,
    tiles: Tiles,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """(dx, dw1, dw2) with None for a gradient not asked for, which is never computed."""
    _check_inputs(x, w1, w2)
    rows, in_features, k, r, p, s = _launch_sizes(x, w1, w2)
    dx = dw1 = dw2 = None
    if need_dx or need_dw1:
        dy2 = dy.reshape(rows, dy.shape[-1]).contiguous()
        dh = torch.empty(rows, k * r, dtype=x.dtype, device=x.device)
        dx2 = torch.empty(rows, in_features, dtype=x.dtype, device=x.device) if need_dx else dh  # dh: an unused pointer
        if rows:
            grid = (triton.cdiv(rows, tiles.block_rows),)
            with _on_device_of(x):
                _monarch_backward_input_kernel[grid](
                    dy2, w1.contiguous(), w2.contiguous(), dh, dx2, rows, in_features, dy.shape[-1], k, r, p, s,
                    COMPUTE_DX=need_dx, DOT_PRECISION=_dot_precision(x.dtype), **tiles.kernel_args(),
                )
        if need_dx:
            dx = dx2.view(x.shape)
        if need_dw1:
            dw1 = first_factor_weight_grad(dh, x, k, p)
    if need_dw2:
        dw2 = bmm_backward(dy, x, w1, w2, h, False, False, True)[2]
    return dx, dw1, dw2


# ---------------------------------------------------------------------------------------------------
# Triton 3.9's interpreter multiplies bfloat16 tiles as their raw uint16 storage (np.matmul on the bits).
# Widening them to fp32 first is exact for the products and matches the GPU's fp32 accumulation.


def _fix_interpreter_bf16_dot() -> None:
    from triton.runtime import interpreter

    builder = type(interpreter.interpreter_builder)
    if getattr(builder.create_dot, "widens_bf16", False):
        return
    original = builder.create_dot

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        if a.dtype.scalar == tl.bfloat16:
            a = self.cast_impl(a, tl.float32)
        if b.dtype.scalar == tl.bfloat16:
            b = self.cast_impl(b, tl.float32)
        return original(self, a, b, d, input_precision, max_num_imprecise_acc)

    create_dot.widens_bf16 = True
    builder.create_dot = create_dot


if _interpreting():
    _fix_interpreter_bf16_dot()
