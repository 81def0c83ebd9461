"""Closed forms for one MoRe-adapted matrix: block sizes, trainable parameters and maximal rank.

Everything here is arithmetic on layer sizes; no tensors. The harness uses it to plan studies
before anything is built, and the tests hold it against counted parameters and measured ranks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class MonarchShape:
    """Sizes of the two block-diagonal factors of one adapted (out x in) matrix.

    k = nblocks, r = blk_r, p = input block size, s = output block size.
    w1 has shape (k, r, p) and w2 has shape (k, s, r).
    """

    in_features: int
    out_features: int
    nblocks: int
    blk_r: int
    in_blksz: int
    out_blksz: int

    @property
    def w1_shape(self) -> tuple[int, int, int]:
        return (self.nblocks, self.blk_r, self.in_blksz)

    @property
    def w2_shape(self) -> tuple[int, int, int]:
        return (self.nblocks, self.out_blksz, self.blk_r)

    @property
    def trainable_params(self) -> int:
        return self.nblocks * self.blk_r * (self.in_blksz + self.out_blksz)

    @property
    def max_rank(self) -> int:
        """Rank reached by the dense update for generic factors.

        Each input block j holds p_j real features (the last may be short from padding), and each
        second-factor block c feeds s_c real outputs (indices t*k + c below out). A block-diagonal
        factor restricted to real features has rank sum(min(r, size)); the product can do no better.
        """
        k, r, p, s = self.nblocks, self.blk_r, self.in_blksz, self.out_blksz
        in_sizes = [min(p, self.in_features - j * p) for j in range(k)]
        out_sizes = [len(range(c, self.out_features, k)) for c in range(k)]
        return min(sum(min(r, n) for n in in_sizes), sum(min(r, n) for n in out_sizes))

    def forward_flops(self, tokens: int) -> int:
        """FLOPs of the adapter's forward pass (a multiply-add counts 2), including padding."""
        return monarch_flops(tokens, self.nblocks, self.blk_r, self.in_blksz, self.out_blksz)


def monarch_flops(tokens: int, nblocks: int, blk_r: int, in_blksz: int, out_blksz: int,
                  first: int = 1, second: int = 1) -> int:
    """FLOPs (a multiply-add counts 2) of `first` products shaped like the first factor (k*r*p multiply-adds
    per token) and `second` shaped like the second (k*r*s). The forward is one of each; the backward one
    second-factor product per gradient among dw2 and dh, one first-factor product per dx and dw1.

    This counts the Monarch product's own work whichever way it is executed: a path that multiplies
    explicit zeros (the expanded second factor) shows that in time, not in FLOPs.
    """
    return 2 * tokens * nblocks * blk_r * (first * in_blksz + second * out_blksz)


def token_count(shape) -> int:
    """Tokens in a (..., features) shape: the product of its leading dimensions."""
    return math.prod(shape[:-1])


def resolve_nblocks(in_features: int, nblocks: int | None, blk_sz: int | None) -> int:
    """k from exactly one of nblocks or blk_sz (k = ceil(in / blk_sz))."""
    if (nblocks is None) == (blk_sz is None):
        raise ValueError(
            f"MoRe needs exactly one of nblocks or blk_sz, got nblocks={nblocks}, blk_sz={blk_sz}. "
            "Give nblocks (the paper uses 4) or blk_sz (the input block size), not both."
        )
    if blk_sz is not None:
        if blk_sz < 1:
            raise ValueError(f"blk_sz must be at least 1, got blk_sz={blk_sz}.")
        return math.ceil(in_features / blk_sz)
    if nblocks < 1:
        raise ValueError(f"nblocks must be at least 1, got nblocks={nblocks}.")
    return nblocks


def monarch_shape(
    in_features: int,
    out_features: int,
    blk_r: int,
    nblocks: int | None = None,
    blk_sz: int | None = None,
    layer_name: str = "layer",
) -> MonarchShape:
    """Validated factor sizes for one (out x in) matrix; errors name the layer and what to change."""
    if blk_r < 1:
        raise ValueError(f"{layer_name}: blk_r must be at least 1, got blk_r={blk_r}. Use blk_r >= 1 (the paper uses 4).")
    k = resolve_nblocks(in_features, nblocks, blk_sz)
    if k > in_features:
        raise ValueError(
            f"{layer_name}: nblocks={k} is larger than its {in_features} input features. "
            f"Use nblocks <= {in_features}, or exclude this layer from target_modules."
        )
    if k > out_features:
        raise ValueError(
            f"{layer_name}: nblocks={k} is larger than its {out_features} output features. "
            f"Use nblocks <= {out_features}, or exclude this layer from target_modules."
        )
    p = math.ceil(in_features / k)
    if (k - 1) * p >= in_features:
        used = math.ceil(in_features / p)
        raise ValueError(
            f"{layer_name}: nblocks={k} with {in_features} input features gives blocks of {p} features, "
            f"which fill only {used} blocks and leave {k - used} empty. Use nblocks <= {used}, "
            f"or a divisor of {in_features}."
        )
    s = math.ceil(out_features / k)
    return MonarchShape(in_features, out_features, k, blk_r, p, s)


def lora_params(in_features: int, out_features: int, r: int) -> int:
    """Trainable parameters of a LoRA of rank r on one (out x in) matrix."""
    return r * (in_features + out_features)
