"""The Monarch multiply written plainly: explicit block-diagonal and permutation matrices.

Slow and memory-hungry, but obviously right: the tests, the kernel checks and the dispatcher hold the
fast paths (`more.bmm`, the Triton kernels) against `monarch_reference`, usually in float64.
Notation as in `more.ops`.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .bmm import factor_sizes, pad_last


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
    k, r, p, s, _ = factor_sizes(x, w1, w2)
    bd1 = torch.block_diag(*w1.unbind(0))  # (k*r, k*p)
    bd2 = torch.block_diag(*w2.unbind(0))  # (k*s, k*r)
    p1 = permutation_p1(k, r, x.device).to(w1.dtype)
    p2 = permutation_p2(k, s, x.device).to(w2.dtype)
    h = pad_last(x, k * p) @ bd1.T @ p1.T
    return (h @ (p2 @ bd2).T)[..., :out_features]


def monarch_dense(w1: Tensor, w2: Tensor, in_features: int, out_features: int) -> Tensor:
    """The dense (out x in) update M, so that delta(x) = x @ M.T. Differentiable."""
    k, r, p = w1.shape
    s = w2.shape[1]
    bd1 = torch.block_diag(*w1.unbind(0))  # (k*r, k*p)
    rows_by_block = bd1.view(r, k, k * p).transpose(0, 1)  # P1 . BD1 grouped by second-factor block: (k, r, k*p)
    blocks = torch.bmm(w2, rows_by_block)  # (k, s, k*p): row t of block c
    return blocks.transpose(0, 1).reshape(s * k, k * p)[:out_features, :in_features]  # P2, then truncate


def _block_diagonal(bd: Tensor, nblocks: int) -> Tensor:
    """The k diagonal blocks of a block-diagonal matrix, stacked: (k, rows/k, cols/k)."""
    rows, cols = bd.shape[0] // nblocks, bd.shape[1] // nblocks
    return torch.stack([bd[j * rows:(j + 1) * rows, j * cols:(j + 1) * cols] for j in range(nblocks)])


def reference_outputs(direction: str, x: Tensor, w1: Tensor, w2: Tensor, out_features: int, needs: tuple = (),
                      dy: Tensor | None = None) -> tuple:
    """What the custom op's implementations return, computed plainly in float64 without autograd (this runs
    inside the op, below autograd): (y,) forward (h is an intermediate, not compared); (dx, dw1, dw2)
    backward, None where not asked for.

    With A = P1 . BD1 (k*r x k*p) and G = P2 . BD2 (k*s x k*r): h = pad(x) A^T, y = h G^T; then
    dh = pad(dy) G, dx = dh A, d(BD2) = P2^T pad(dy)^T h and d(BD1) = P1^T dh^T pad(x), of which the
    diagonal blocks are dw2 and dw1.
    """
    k, r, p, s, in_features = factor_sizes(x, w1, w2)
    x64, w1_64, w2_64 = (t.detach().double() for t in (x, w1, w2))
    if direction == "forward":
        return (monarch_reference(x64, w1_64, w2_64, out_features),)
    p1 = permutation_p1(k, r, x.device).double()
    p2 = permutation_p2(k, s, x.device).double()
    a = p1 @ torch.block_diag(*w1_64.unbind(0))
    g = p2 @ torch.block_diag(*w2_64.unbind(0))
    xp = pad_last(x64.reshape(-1, in_features), k * p)
    dyp = pad_last(dy.detach().double().reshape(xp.shape[0], -1), k * s)
    h = xp @ a.T
    dh = dyp @ g
    need_dx, need_dw1, need_dw2 = needs
    dx = (dh @ a)[:, :in_features].reshape(x.shape) if need_dx else None
    dw1 = _block_diagonal(p1.T @ (dh.T @ xp), k) if need_dw1 else None
    dw2 = _block_diagonal(p2.T @ (dyp.T @ h), k) if need_dw2 else None
    return dx, dw1, dw2
