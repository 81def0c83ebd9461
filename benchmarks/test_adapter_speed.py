"""Forward + backward time of one adapted layer: MoRe's fast path, MoRe's reference path, PEFT LoRA.

MoRe uses the paper's default (4 blocks, blk_r 4); LoRA gets the rank with the same trainable
parameters (r * (in + out) = 4 * 4 * (in/4 + out/4), so r = 4). Tokens = 2048.

`adapter` groups time the update path alone (what differs between methods); `layer` groups time the
whole adapted layer, frozen base included, at the two smaller shapes (the base GEMM dominates the large
ones on a CPU and takes seconds per step).
"""
import peft
import pytest
import torch
from torch import nn

import more

TOKENS = 2048
NBLOCKS, BLK_R = 4, 4
SHAPES = [(768, 768), (1024, 1024), (4096, 4096), (4096, 11008)]
PATHS = ["more-fast", "more-reference", "lora"]


class OneLayer(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.proj = nn.Linear(in_features, out_features)

    def forward(self, x):
        return self.proj(x)


def adapted(path, in_features, out_features):
    if path == "lora":
        rank = more.monarch_shape(in_features, out_features, BLK_R, NBLOCKS).trainable_params // (in_features + out_features)
        config = peft.LoraConfig(r=rank, lora_alpha=rank, target_modules=["proj"])
    else:
        kernel = "auto" if path == "more-fast" else "reference"
        config = more.MoReConfig(nblocks=NBLOCKS, blk_r=BLK_R, target_modules=["proj"], init_weights=False, kernel=kernel)
    model = peft.get_peft_model(OneLayer(in_features, out_features), config)
    return model.base_model.model.proj


def update_only(layer, path, out_features):
    """The adapter's own update, without the frozen base layer."""
    if path == "lora":
        return lambda x: layer.lora_B["default"](layer.lora_A["default"](x)) * layer.scaling["default"]
    multiply = more.ops.monarch_kernel("auto" if path == "more-fast" else "reference")
    w1, w2 = layer.more_blkdiag1["default"], layer.more_blkdiag2["default"]
    return lambda x: multiply(x, w1, w2, out_features)


def run_step(fn, x, grad):
    x.grad = None
    fn(x).backward(grad)


def time_steps(benchmark, group, path, shape, whole_layer):
    in_features, out_features = shape
    benchmark.group = f"{group} {in_features}x{out_features}"
    layer = adapted(path, in_features, out_features)
    fn = layer if whole_layer else update_only(layer, path, out_features)
    x = torch.randn(TOKENS, in_features, requires_grad=True)
    grad = torch.randn(TOKENS, out_features)
    benchmark.pedantic(run_step, args=(fn, x, grad), rounds=10, warmup_rounds=2)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("path", PATHS)
def test_adapter(benchmark, path, shape):
    time_steps(benchmark, "adapter", path, shape, whole_layer=False)


@pytest.mark.parametrize("shape", SHAPES[:2], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("path", ["more-fast", "lora"])
def test_layer(benchmark, path, shape):
    time_steps(benchmark, "layer", path, shape, whole_layer=True)
