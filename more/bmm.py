"""The bmm path of the Monarch multiply: two batched matrix products, and their hand-written backward.

Notation as in `more.ops`: x (B, in), w1 (k, r, p), w2 (k, s, r), h[b, j*r + i] the first factor's output.
These functions know nothing of the custom op or of dispatch; `more.dispatch` calls them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def factor_sizes(x: Tensor, w1: Tensor, w2: Tensor) -> tuple[int, int, int, int, int]:
    """(k, r, p, s, in_features), checked: w1 and w2 share k and r, and w1 covers x's features."""
    k, r, p = w1.shape
    k2, s, r2 = w2.shape
    if (k2, r2) != (k, r):
        raise ValueError(f"w1 {tuple(w1.shape)} and w2 {tuple(w2.shape)} do not share nblocks and blk_r")
    if x.shape[-1] > k * p:
        raise ValueError(f"input has {x.shape[-1]} features but w1 {tuple(w1.shape)} covers only {k * p}")
    return k, r, p, s, x.shape[-1]


def pad_last(t: Tensor, size: int) -> Tensor:
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
    padded = pad_last(grad_expanded, s * k).view(r, k, s, k)
    return torch.diagonal(padded, dim1=1, dim2=3).permute(2, 1, 0).contiguous()


def _permute_p1(h: Tensor, k: int, r: int) -> Tensor:
    """h[b, j*r + i] -> g[c, b, a] with a*k + c = j*r + i: the second factor's (k, B, r) input."""
    return h.view(-1, r, k).permute(2, 0, 1).contiguous()


def bmm_forward(x: Tensor, w1: Tensor, w2: Tensor, out_features: int) -> tuple[Tensor, Tensor]:
    """(y, h): y (..., out_features) and the first factor's output h (B, k*r), kept for the backward."""
    k, r, p, s, _ = factor_sizes(x, w1, w2)
    lead = x.shape[:-1]
    x2 = pad_last(x.reshape(-1, x.shape[-1]), k * p)
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


def first_factor_weight_grad(dh: Tensor, x: Tensor, nblocks: int, in_blksz: int) -> Tensor:
    """dw1[j] = dh_j^T @ x_j over all tokens, on strided (k, B, r) and (k, B, p) views: no copies unless
    x needs padding to k*p features."""
    batch, features = dh.shape
    dh_blocks = dh.view(batch, nblocks, features // nblocks).transpose(0, 1)
    x_blocks = pad_last(x.reshape(batch, x.shape[-1]), nblocks * in_blksz).view(batch, nblocks, in_blksz).transpose(0, 1)
    return torch.bmm(dh_blocks.transpose(1, 2), x_blocks)  # (k, r, p)


def bmm_backward(
    dy: Tensor, x: Tensor, w1: Tensor, w2: Tensor, h: Tensor, need_dx: bool, need_dw1: bool, need_dw2: bool
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """(dx, dw1, dw2) with None for a gradient not asked for, which is never computed."""
    k, r, p, s, in_features = factor_sizes(x, w1, w2)
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
        dy_blocks = pad_last(dy2, s * k).view(batch, s, k).permute(2, 0, 1).contiguous()  # inverse P2
        if need_dw2:
            dw2 = torch.bmm(dy_blocks.transpose(1, 2), _permute_p1(h, k, r))
        if need_dx or need_dw1:
            dg = torch.bmm(dy_blocks, w2)  # (k, B, r): [c, b, a]
            dh = dg.permute(1, 2, 0).reshape(batch, k * r)  # inverse P1
    if dh is not None:
        if need_dx:
            dx_padded = torch.empty(batch, k, p, dtype=x.dtype, device=x.device)
            torch.bmm(dh.view(batch, k, r).transpose(0, 1), w1, out=dx_padded.transpose(0, 1))
            dx = dx_padded.view(batch, k * p)
            if k * p != in_features:
                dx = dx[:, :in_features].contiguous()
            dx = dx.view(*lead, in_features)
        if need_dw1:
            dw1 = first_factor_weight_grad(dh, x, k, p)
    return dx, dw1, dw2
