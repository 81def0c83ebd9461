"""D2S projection: the MoRe factors nearest (in Frobenius norm) to a dense matrix.

Written in PyTorch's (out x in) layout, so project_dense(monarch_dense(w1, w2)) gives back the same
update. (The official code projects the transposed (in x out) matrix; the tests pin our orientation.)

Why per-block SVD is exact: entry M[t*k + c, j*p + q] = sum_a w2[c, t, a] * w1[j, i, q] over the a
with a*k + c = j*r + i. So the (s x p) sub-block (c, j) of M is a product of its own columns of w2
and rows of w1, and no factor entry appears in two sub-blocks. The error splits over sub-blocks,
and each is minimised by its truncated SVD (Eckart-Young).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .shapes import monarch_shape


def project_dense(
    weight: Tensor, nblocks: int | None = None, blk_r: int = 4, blk_sz: int | None = None
) -> tuple[Tensor, Tensor]:
    """Factors (w1 (k, r, p), w2 (k, s, r)) whose Monarch update is nearest to `weight` (out x in)."""
    out_features, in_features = weight.shape
    shape = monarch_shape(in_features, out_features, blk_r, nblocks, blk_sz, layer_name="project_dense")
    k, r, p, s = shape.nblocks, shape.blk_r, shape.in_blksz, shape.out_blksz
    dense = torch.zeros(s * k, k * p, dtype=torch.float64, device=weight.device)
    dense[:out_features, :in_features] = weight.detach().to(torch.float64)
    # sub-block (c, j): rows t*k + c, columns j*p + q
    blocks = dense.view(s, k, k, p).permute(1, 2, 0, 3)  # (c, j, s, p)
    u, sv, vh = torch.linalg.svd(blocks, full_matrices=False)
    root = sv.sqrt()
    w1 = torch.zeros(k, r, p, dtype=torch.float64, device=weight.device)
    w2 = torch.zeros(k, s, r, dtype=torch.float64, device=weight.device)
    for c in range(k):
        used = {}  # components of sub-block (c, j) handed out so far
        for a in range(r):
            j, i = divmod(a * k + c, r)
            n = used.get(j, 0)
            used[j] = n + 1
            if n < sv.shape[-1]:
                w2[c, :, a] = u[c, j, :, n] * root[c, j, n]
                w1[j, i, :] = vh[c, j, n, :] * root[c, j, n]
    return w1.to(weight.dtype), w2.to(weight.dtype)


def project_lora(
    lora_A: Tensor, lora_B: Tensor, scaling: float = 1.0, nblocks: int | None = None, blk_r: int = 4,
    blk_sz: int | None = None,
) -> tuple[Tensor, Tensor]:
    """MoRe factors nearest to a trained LoRA update scaling * B @ A (A: (r, in), B: (out, r))."""
    return project_dense(scaling * (lora_B @ lora_A), nblocks=nblocks, blk_r=blk_r, blk_sz=blk_sz)
