"""Fused Triton kernels for the Monarch multiply y = P2 . BD2 . P1 . BD1 . pad(x), truncated to `out`.

Notation as in `more.ops`: x (B, in), w1 (k, r, p), w2 (k, s, r), h[b, j*r + i] the first factor's output.
NBLOCKS (k) and BLK_R (r) are compile-time constants; every tl.dot is a 2-D product with an fp32 accumulator.

Forward, one launch, one program per tile of BLOCK_ROWS tokens:
1. first factor, block j at a time: h[b, j*r + i] = sum_q x[b, j*p + q] w1[j, i, q] (the input zero-padded
   by masked loads); each x element is read once. The tile of h is stored to global memory (the backward
   needs it for dw2) and, after a barrier, read back by the second factor from L1/L2.
2. second factor, two ways chosen at compile time (EXPANDED):
   - expanded (k*r padded to a power of two KR_PAD <= EXPANDED_MAX_KR, MoRe's regime: 16 at the paper's
     default): y[b, n0:n0+BLOCK_OUT] = h[b, :] @ W[:, n0:n0+BLOCK_OUT], with W = P2 . BD2 . P1 the (k*r x out)
     matrix of `more.bmm.second_factor_matrix`, gathered tile by tile from w2 by address (zero off the
     permuted block diagonal). h is read contiguously, y written in contiguous tiles, P1 and P2 cost nothing;
     the price is k times the second factor's multiply-adds, on tensor cores that have them to spare.
   - per block (larger k*r): for each block c, g[b, a] = h[b, a*k + c] (P1 as the load address) times
     w2[c]^T, stored to y[b, t*k + c] (P2 as the store address).

Backward, one launch, the forward's mirror, with the weight gradients fused in:
1. second factor, one pass over dy: dh = dy @ W^T (expanded: contiguous dy tiles, an accumulator over the
   output tiles), or per block c: dh[b, a*k + c] = sum_t dy[b, t*k + c] w2[c, t, a]; from the same dy tiles
   and the forward's h, dw2's partial sum over the program's tokens (h^T dy, the permuted block diagonal of it).
   dh is stored for step 2.
2. after a barrier, first factor, one pass over x and dx, block j at a time: dx[b, j*p + q] = sum_i
   dh[b, j*r + i] w1[j, i, q] and dw1's partial sum dh_j^T x_j.
Each program writes its fp32 partial sums of dw1 and dw2 at the addresses of the weights they belong to, in
its own slice of a (programs, k, r, p) and a (programs, k, s, r) buffer: no atomics; the launcher then sums
over the programs (torch). Forward and backward together read x twice and dy once and write y and dx, plus h,
dh and the partial sums. Which gradients are computed (dx, dw1, dw2) is a compile-time choice.

tl.dot needs each dimension >= 16: r and k*r are padded inside the kernels (masked loads give zeros), so are
the tile widths. Accumulation is fp32 for every input dtype; outputs, h and dh are stored in the input dtype,
as the bmm path does.

Which calls run these kernels, and at which of `candidate_tiles`, is decided by `more.dispatch`; this module
only launches them. The index arithmetic of x, h, y (and their gradients), w1 and w2 lives in the small
helpers below, which the forward and backward share.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

# Upper bound on the elements of each register tile; it sets the tile sizes below.
TILE_ELEMENTS = 8192
# The expanded second factor while k*r, padded to a power of two, is at most this.
EXPANDED_MAX_KR = 64
# Most bytes of fp32 weight-gradient partial sums one backward launch writes; more rows take more launches.
MAX_PARTIAL_BYTES = 1 << 28


@triton.jit
def _tile(row, row_ok, col, col_ok, width):
    """Offsets and mask of the (rows x cols) tile of a row-major (tokens x width) tensor: x, y, h and their
    gradients."""
    return row[:, None] * width + col[None, :], row_ok[:, None] & col_ok[None, :]


@triton.jit
def _input_tile(row, row_ok, j, q, in_features, in_blksz):
    """The tile of x (or dx) at positions q of input block j, x[b, j*p + q]: the input is zero-padded past
    in_features."""
    col = j * in_blksz + q
    return _tile(row, row_ok, col, (q < in_blksz) & (col < in_features), in_features)


@triton.jit
def _w1_index(j, i, q, in_blksz, BLK_R: tl.constexpr):
    """Offsets of w1[j, i, q] in its (k, r, p) layout, and which entries exist (i, q broadcast)."""
    return (j * BLK_R + i) * in_blksz + q, (i < BLK_R) & (q < in_blksz)


@triton.jit
def _w2_index(c, t, a, out_blksz, BLK_R: tl.constexpr):
    """Offsets of w2[c, t, a] in its (k, s, r) layout, and which entries exist (c, t, a broadcast)."""
    return (c * out_blksz + t) * BLK_R + a, (t < out_blksz) & (a < BLK_R)


@triton.jit
def _expanded_index(f, col, out_blksz, NBLOCKS: tl.constexpr, BLK_R: tl.constexpr):
    """W = P2 . BD2 . P1 as a (k*r x k*s) matrix, on h's features f and y's columns col (broadcast):
    W[f, col] = w2[c, t, a] where f = a*k + c and col = t*k + c, zero off that permuted block diagonal.
    Offsets into w2, and the mask of W's non-zero entries."""
    c = f % NBLOCKS
    offset, exists = _w2_index(c, col // NBLOCKS, f // NBLOCKS, out_blksz, BLK_R)
    return offset, exists & (c == col % NBLOCKS)


@triton.jit(do_not_specialize=["rows"])
def _monarch_forward_kernel(
    x_ptr, w1_ptr, w2_ptr, h_ptr, y_ptr,
    rows, in_features, out_features, in_blksz, out_blksz,
    NBLOCKS: tl.constexpr, BLK_R: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_IN: tl.constexpr, BLOCK_OUT: tl.constexpr, KR_PAD: tl.constexpr, EXPANDED: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    row = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_ok = row < rows
    row = row.to(tl.int64)  # B * in can pass 2**31
    FEATURES = NBLOCKS * BLK_R
    i = tl.arange(0, BLOCK_R)
    q = tl.arange(0, BLOCK_IN)

    # First factor, one block at a time: h[b, j*r + i] = sum_q x[b, j*p + q] w1[j, i, q].
    for j in range(NBLOCKS):
        acc = tl.zeros((BLOCK_ROWS, BLOCK_R), dtype=tl.float32)
        for q0 in range(0, in_blksz, BLOCK_IN):
            x_at, x_ok = _input_tile(row, row_ok, j, q0 + q, in_features, in_blksz)
            w1_at, w1_ok = _w1_index(j, i[None, :], q0 + q[:, None], in_blksz, BLK_R)  # (BLOCK_IN, BLOCK_R)
            acc = tl.dot(tl.load(x_ptr + x_at, mask=x_ok, other=0.0), tl.load(w1_ptr + w1_at, mask=w1_ok, other=0.0),
                         acc, input_precision=DOT_PRECISION)
        h_at, h_ok = _tile(row, row_ok, j * BLK_R + i, i < BLK_R, FEATURES)
        tl.store(h_ptr + h_at, acc.to(h_ptr.dtype.element_ty), mask=h_ok)

    # All threads of the program must have stored their part of h before any reads it back.
    tl.debug_barrier()

    n = tl.arange(0, BLOCK_OUT)
    if EXPANDED:
        # y[b, col] = sum_f h[b, f] W[f, col], in contiguous tiles of y.
        f = tl.arange(0, KR_PAD)
        h_at, h_ok = _tile(row, row_ok, f, f < FEATURES, FEATURES)
        h_tile = tl.load(h_ptr + h_at, mask=h_ok, other=0.0)  # (BLOCK_ROWS, KR_PAD)
        for n0 in range(0, out_features, BLOCK_OUT):
            col = n0 + n
            w_at, w_ok = _expanded_index(f[:, None], col[None, :], out_blksz, NBLOCKS, BLK_R)  # (KR_PAD, BLOCK_OUT)
            out = tl.dot(h_tile, tl.load(w2_ptr + w_at, mask=w_ok, other=0.0), input_precision=DOT_PRECISION)
            y_at, y_ok = _tile(row, row_ok, col, col < out_features, out_features)
            tl.store(y_ptr + y_at, out.to(y_ptr.dtype.element_ty), mask=y_ok)
    else:
        # Per block c: out[b, t] = sum_a h[b, a*k + c] w2[c, t, a] (P1 as the load address), to y[b, t*k + c] (P2).
        for c in range(NBLOCKS):
            g_at, g_ok = _tile(row, row_ok, i * NBLOCKS + c, i < BLK_R, FEATURES)
            g = tl.load(h_ptr + g_at, mask=g_ok, other=0.0)  # (BLOCK_ROWS, BLOCK_R)
            for t0 in range(0, out_blksz, BLOCK_OUT):
                t = t0 + n
                w2_at, w2_ok = _w2_index(c, t[None, :], i[:, None], out_blksz, BLK_R)  # (BLOCK_R, BLOCK_OUT)
                out = tl.dot(g, tl.load(w2_ptr + w2_at, mask=w2_ok, other=0.0), input_precision=DOT_PRECISION)
                col = t * NBLOCKS + c  # col < out_features implies t < s
                y_at, y_ok = _tile(row, row_ok, col, col < out_features, out_features)
                tl.store(y_ptr + y_at, out.to(y_ptr.dtype.element_ty), mask=y_ok)


@triton.jit(do_not_specialize=["rows", "row0"])
def _monarch_backward_kernel(
    dy_ptr, x_ptr, w1_ptr, w2_ptr, h_ptr, dh_ptr, dx_ptr, dw1_ptr, dw2_ptr,
    row0, rows, in_features, out_features, in_blksz, out_blksz,
    COMPUTE_DH: tl.constexpr, COMPUTE_DX: tl.constexpr, COMPUTE_DW1: tl.constexpr, COMPUTE_DW2: tl.constexpr,
    NBLOCKS: tl.constexpr, BLK_R: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_IN: tl.constexpr, BLOCK_OUT: tl.constexpr, KR_PAD: tl.constexpr, EXPANDED: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    row = row0 + pid * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_ok = row < rows
    row = row.to(tl.int64)
    FEATURES = NBLOCKS * BLK_R
    i = tl.arange(0, BLOCK_R)
    n = tl.arange(0, BLOCK_OUT)
    # This program's fp32 partial sums of dw1 (k, r, p) and dw2 (k, s, r), over its rows only; the launcher
    # adds them up over the programs. Masked rows load as zeros and add nothing.
    dw1_ptr += pid.to(tl.int64) * (FEATURES * in_blksz)
    dw2_ptr += pid.to(tl.int64) * (FEATURES * out_blksz)

    # Second factor, one pass over dy: dh = dy W^T, and dW = h^T dy, whose permuted block diagonal is dw2.
    # Each partial sum goes to the addresses of the w2 entries it is the gradient of.
    if EXPANDED:
        f = tl.arange(0, KR_PAD)
        h_at, h_ok = _tile(row, row_ok, f, f < FEATURES, FEATURES)
        if COMPUTE_DW2:
            h_tile = tl.load(h_ptr + h_at, mask=h_ok, other=0.0)  # (BLOCK_ROWS, KR_PAD)
        acc = tl.zeros((BLOCK_ROWS, KR_PAD), dtype=tl.float32)
        # Columns run to k*s, past out_features where dy is zero, so that every entry of dw2 is written.
        for n0 in range(0, NBLOCKS * out_blksz, BLOCK_OUT):
            col = n0 + n
            dy_at, dy_ok = _tile(row, row_ok, col, col < out_features, out_features)
            dy_tile = tl.load(dy_ptr + dy_at, mask=dy_ok, other=0.0)  # (BLOCK_ROWS, BLOCK_OUT)
            w_at, w_ok = _expanded_index(f[None, :], col[:, None], out_blksz, NBLOCKS, BLK_R)  # (BLOCK_OUT, KR_PAD): W^T
            if COMPUTE_DH:
                acc = tl.dot(dy_tile, tl.load(w2_ptr + w_at, mask=w_ok, other=0.0), acc, input_precision=DOT_PRECISION)
            if COMPUTE_DW2:
                tl.store(dw2_ptr + w_at, tl.dot(tl.trans(dy_tile), h_tile, input_precision=DOT_PRECISION), mask=w_ok)
        if COMPUTE_DH:
            tl.store(dh_ptr + h_at, acc.to(dh_ptr.dtype.element_ty), mask=h_ok)
    else:
        # Per block c: dh[b, a*k + c] = sum_t dy[b, t*k + c] w2[c, t, a] (P2 inverse in the load address, P1
        # inverse in the store address), and dw2[c, t, a] = sum_b dy[b, t*k + c] h[b, a*k + c].
        for c in range(NBLOCKS):
            g_at, g_ok = _tile(row, row_ok, i * NBLOCKS + c, i < BLK_R, FEATURES)
            if COMPUTE_DW2:
                g = tl.load(h_ptr + g_at, mask=g_ok, other=0.0)  # (BLOCK_ROWS, BLOCK_R)
            acc = tl.zeros((BLOCK_ROWS, BLOCK_R), dtype=tl.float32)
            for t0 in range(0, out_blksz, BLOCK_OUT):
                t = t0 + n
                col = t * NBLOCKS + c
                dy_at, dy_ok = _tile(row, row_ok, col, col < out_features, out_features)
                dy_tile = tl.load(dy_ptr + dy_at, mask=dy_ok, other=0.0)  # (BLOCK_ROWS, BLOCK_OUT)
                w2_at, w2_ok = _w2_index(c, t[:, None], i[None, :], out_blksz, BLK_R)  # (BLOCK_OUT, BLOCK_R)
                if COMPUTE_DH:
                    acc = tl.dot(dy_tile, tl.load(w2_ptr + w2_at, mask=w2_ok, other=0.0), acc,
                                 input_precision=DOT_PRECISION)
                if COMPUTE_DW2:
                    tl.store(dw2_ptr + w2_at, tl.dot(tl.trans(dy_tile), g, input_precision=DOT_PRECISION), mask=w2_ok)
            if COMPUTE_DH:
                tl.store(dh_ptr + g_at, acc.to(dh_ptr.dtype.element_ty), mask=g_ok)

    # First factor, one pass over x and dx: dx[b, j*p + q] = sum_i dh[b, j*r + i] w1[j, i, q] and
    # dw1[j, i, q] = sum_b dh[b, j*r + i] x[b, j*p + q], the partial sum at w1's addresses.
    if COMPUTE_DH:
        tl.debug_barrier()  # dh of this tile complete before it is read block by block
        q = tl.arange(0, BLOCK_IN)
        for j in range(NBLOCKS):
            dh_at, dh_ok = _tile(row, row_ok, j * BLK_R + i, i < BLK_R, FEATURES)
            dh_j = tl.load(dh_ptr + dh_at, mask=dh_ok, other=0.0)  # (BLOCK_ROWS, BLOCK_R)
            for q0 in range(0, in_blksz, BLOCK_IN):
                x_at, x_ok = _input_tile(row, row_ok, j, q0 + q, in_features, in_blksz)  # padded inputs: no gradient
                w1_at, w1_ok = _w1_index(j, i[:, None], q0 + q[None, :], in_blksz, BLK_R)  # (BLOCK_R, BLOCK_IN)
                if COMPUTE_DX:
                    dx_tile = tl.dot(dh_j, tl.load(w1_ptr + w1_at, mask=w1_ok, other=0.0), input_precision=DOT_PRECISION)
                    tl.store(dx_ptr + x_at, dx_tile.to(dx_ptr.dtype.element_ty), mask=x_ok)
                if COMPUTE_DW1:
                    x_tile = tl.load(x_ptr + x_at, mask=x_ok, other=0.0)  # (BLOCK_ROWS, BLOCK_IN)
                    tl.store(dw1_ptr + w1_at, tl.dot(tl.trans(dh_j), x_tile, input_precision=DOT_PRECISION), mask=w1_ok)


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
    block_out: int  # output columns (expanded) or positions t (per block) per second-factor step
    kr_pad: int  # k*r padded for tl.dot
    expanded: bool  # the second factor as one (k*r x out) product
    num_warps: int
    num_stages: int = 3  # software-pipelining depth of the loops over input and output steps (Triton's default)

    def kernel_args(self) -> dict:
        return dict(BLOCK_ROWS=self.block_rows, BLOCK_R=self.block_r, BLOCK_IN=self.block_in,
                    BLOCK_OUT=self.block_out, KR_PAD=self.kr_pad, EXPANDED=self.expanded, num_warps=self.num_warps,
                    num_stages=self.num_stages)


def plan_tiles(nblocks: int, blk_r: int, in_blksz: int, out_blksz: int, block_rows: int = 32,
               num_warps: int = 4, num_stages: int = 3) -> Tiles:
    """Tiles that keep each register tile under TILE_ELEMENTS elements."""
    block_r = max(16, _pow2(blk_r))
    kr_pad = max(16, _pow2(nblocks * blk_r))
    expanded = kr_pad <= EXPANDED_MAX_KR
    width = kr_pad if expanded else block_r
    columns = nblocks * out_blksz if expanded else out_blksz
    block_out = min(_pow2(columns), 128 if expanded else 64, TILE_ELEMENTS // block_rows, TILE_ELEMENTS // width)
    block_in = min(_pow2(in_blksz), 128, TILE_ELEMENTS // block_rows, TILE_ELEMENTS // block_r)
    return Tiles(block_rows, block_r, max(16, block_in), max(16, block_out), kr_pad, expanded, num_warps, num_stages)


# (block_rows, num_warps, num_stages) that more.dispatch tries on first use of a shape on CUDA; it keeps the
# fastest that passes its check. The first is the default where nothing is measured. Chosen from a sweep of
# rows 16-128, 4 or 8 warps and 1-4 stages on an H200 (bf16, 16,384 tokens, 4096 x 4096 and 4096 x 11008,
# nblocks 4, blk_r 4): 64 rows won the backward on both shapes (0.17 and 0.26 ms, against 0.21 and 0.32 at
# 32 rows); fewer rows win at a few thousand tokens; 128 rows spilled and never won.
TUNING_CANDIDATES = ((64, 4, 3), (64, 8, 3), (32, 4, 4), (16, 4, 3))


def candidate_tiles(nblocks: int, blk_r: int, in_blksz: int, out_blksz: int) -> list[Tiles]:
    """Every tiling the dispatcher may choose for these sizes."""
    return [plan_tiles(nblocks, blk_r, in_blksz, out_blksz, *candidate) for candidate in TUNING_CANDIDATES]


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


def kernel_stats(compiled) -> dict:
    """Registers per thread and spilled registers of a compiled kernel (the value a launch returns); None
    where Triton does not say (the CPU interpreter)."""
    return {"n_regs": getattr(compiled, "n_regs", None), "n_spills": getattr(compiled, "n_spills", None)}


def _record(stats: dict | None, name: str, compiled) -> None:
    if stats is not None:
        stats[name] = kernel_stats(compiled)


def monarch_forward(x: Tensor, w1: Tensor, w2: Tensor, out_features: int, tiles: Tiles,
                    stats: dict | None = None) -> tuple[Tensor, Tensor]:
    """(y, h) as the custom op `more::monarch` returns them, from one kernel launch at `tiles`.
    `stats`, when given, receives the compiled kernel's register and spill counts (see kernel_stats)."""
    _check_inputs(x, w1, w2)
    rows, in_features, k, r, p, s = _launch_sizes(x, w1, w2)
    x2 = x.reshape(rows, in_features).contiguous()
    # h is always stored: the backward needs it (dw2), and the second factor reads it back.
    h = torch.empty(rows, k * r, dtype=x.dtype, device=x.device)
    y = torch.empty(rows, out_features, dtype=x.dtype, device=x.device)
    if rows:
        grid = (triton.cdiv(rows, tiles.block_rows),)
        with _on_device_of(x):
            compiled = _monarch_forward_kernel[grid](
                x2, w1.contiguous(), w2.contiguous(), h, y, rows, in_features, out_features, p, s,
                NBLOCKS=k, BLK_R=r, DOT_PRECISION=_dot_precision(x.dtype), **tiles.kernel_args(),
            )
            _record(stats, "forward", compiled)
    return y.view(*x.shape[:-1], out_features), h


def backward_name(need_dx: bool, need_dw1: bool, need_dw2: bool) -> str:
    """The backward kernel variant that computes these gradients, as `stats` names it: "backward_dx_dw1_dw2",
    "backward_dw1_dw2" (an input without gradient, as at the first adapted layer), ..."""
    return "_".join(["backward"] + [g for g, need in (("dx", need_dx), ("dw1", need_dw1), ("dw2", need_dw2)) if need])


def _add_partials(total: Tensor | None, partials: Tensor) -> Tensor:
    """The sum over programs of one launch's partial sums, added to the previous launches'."""
    return partials.sum(0) if total is None else total.add_(partials.sum(0))


def monarch_backward(
    dy: Tensor, x: Tensor, w1: Tensor, w2: Tensor, h: Tensor, need_dx: bool, need_dw1: bool, need_dw2: bool,
    tiles: Tiles, stats: dict | None = None,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """(dx, dw1, dw2) with None for a gradient not asked for, which is never computed; all of them from one
    kernel launch (several past MAX_PARTIAL_BYTES), then the sum of the weight gradients' per-program partial
    sums. `stats` as for monarch_forward."""
    _check_inputs(x, w1, w2)
    rows, in_features, k, r, p, s = _launch_sizes(x, w1, w2)
    out_features = dy.shape[-1]
    need_dh = need_dx or need_dw1
    if not (need_dh or need_dw2):
        return None, None, None
    dy2 = dy.reshape(rows, out_features).contiguous()
    w1, w2 = w1.contiguous(), w2.contiguous()
    # h stands in for the pointers a variant never touches.
    x2 = x.reshape(rows, in_features).contiguous() if need_dw1 else h
    dh = torch.empty(rows, k * r, dtype=x.dtype, device=x.device) if need_dh else h
    dx = torch.empty(rows, in_features, dtype=x.dtype, device=x.device) if need_dx else h
    dw1 = dw2 = None
    partial_bytes = 4 * k * r * ((p if need_dw1 else 0) + (s if need_dw2 else 0))
    rows_per_launch = max(1, MAX_PARTIAL_BYTES // max(partial_bytes, 1)) * tiles.block_rows
    f32 = dict(dtype=torch.float32, device=x.device)
    with _on_device_of(x):
        for row0 in range(0, rows, rows_per_launch):
            programs = triton.cdiv(min(rows_per_launch, rows - row0), tiles.block_rows)
            dw1_part = torch.empty(programs, k, r, p, **f32) if need_dw1 else h
            dw2_part = torch.empty(programs, k, s, r, **f32) if need_dw2 else h
            compiled = _monarch_backward_kernel[(programs,)](
                dy2, x2, w1, w2, h, dh, dx, dw1_part, dw2_part,
                row0, rows, in_features, out_features, p, s,
                COMPUTE_DH=need_dh, COMPUTE_DX=need_dx, COMPUTE_DW1=need_dw1, COMPUTE_DW2=need_dw2,
                NBLOCKS=k, BLK_R=r, DOT_PRECISION=_dot_precision(x.dtype), **tiles.kernel_args(),
            )
            _record(stats, backward_name(need_dx, need_dw1, need_dw2), compiled)
            if need_dw1:
                dw1 = _add_partials(dw1, dw1_part)
            if need_dw2:
                dw2 = _add_partials(dw2, dw2_part)
    if need_dw1:
        dw1 = dw1.to(x.dtype) if dw1 is not None else torch.zeros_like(w1)
    if need_dw2:
        dw2 = dw2.to(x.dtype) if dw2 is not None else torch.zeros_like(w2)
    return (dx.view(x.shape) if need_dx else None), dw1, dw2


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
