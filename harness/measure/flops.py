"""FLOPs, counted two ways: fvcore's FlopCountAnalysis (forward) and torch's FlopCounterMode
(forward and a full training step). A multiply-add counts 2 FLOPs everywhere in the harness.

Both need eager attention (the CPU SDPA kernel is not counted). fvcore traces the model with
torch.jit, so it gets a wrapper that returns the logits only, with use_cache=False, and a handle for
MoRe's custom op, which it would otherwise skip. Per-module adapter FLOPs are the adapted layer's
count minus its base layer's.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Callable

import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from more.shapes import monarch_flops, token_count

from .params import adapted_modules, strip_peft_prefix
from .records import Measurement


def use_eager_attention(model: nn.Module) -> None:
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    elif getattr(model, "config", None) is not None:
        model.config._attn_implementation = "eager"


def model_output(output):
    """The tensor a model's output stands for: logits, else the last hidden state."""
    for name in ("logits", "last_hidden_state"):
        value = getattr(output, name, None)
        if value is not None:
            return value
    return output[0] if isinstance(output, (tuple, list)) else output


class TraceableModel(nn.Module):
    """A HF model as a function of tensors that returns one tensor, for torch.jit.trace."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        kwargs = {"use_cache": False} if getattr(getattr(self.model, "config", None), "use_cache", None) is not None else {}
        return model_output(self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs))


def _monarch_macs(inputs, outputs) -> int:
    """fvcore handle for more::monarch: multiply-adds of both block-diagonal products."""
    x, w1, w2 = (get_shape(v) for v in inputs[:3])
    return monarch_flops(token_count(x), *w1, w2[1]) // 2


def fvcore_module_name(name: str) -> str:
    """fvcore's module path (under TraceableModel's `model`) relative to the base model."""
    return strip_peft_prefix(name.removeprefix("model."))


def _adapter_rows(per_module: dict[str, float], model: nn.Module, metric: str) -> list[Measurement]:
    rows, total = [], 0
    for name, _ in adapted_modules(model):
        own = per_module.get(name, 0) - per_module.get(f"{name}.base_layer", 0)
        total += own
        rows.append(Measurement(metric, own, "flops", scope=name))
    rows.append(Measurement(metric, total, "flops"))
    return rows


def fvcore_forward_flops(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[Measurement]:
    use_eager_attention(model)
    analysis = (
        FlopCountAnalysis(TraceableModel(model).eval(), (input_ids, attention_mask))
        .set_op_handle("more::monarch", _monarch_macs)
        .unsupported_ops_warnings(False)
        .uncalled_modules_warnings(False)
    )
    per_module = {fvcore_module_name(k): 2 * v for k, v in analysis.by_module().items()}
    rows = [Measurement("flops_forward_fvcore", 2 * analysis.total(), "flops")]
    rows += _adapter_rows(per_module, model, "adapter_flops_forward_fvcore")
    for op, calls in sorted(analysis.unsupported_ops().items()):
        # what fvcore skipped (elementwise ops, softmax, embeddings): named, so nobody reads 0 as cheap
        rows.append(Measurement("fvcore_skipped_op_calls", calls, "calls", scope=op))
    return rows


def counter_flops(model: nn.Module, run: Callable[[], torch.Tensor], train: bool) -> list[Measurement]:
    """FlopCounterMode over `run()` (forward), plus `.backward()` of its result when train.

    Per-module adapter rows come from the forward only: FlopCounterMode's module tracker cannot tell
    where a module's backward ends when the module's inputs need no gradient (the first layer's
    adapters see frozen embeddings), so it would charge one layer's backward to the next. The
    training step is reported for the whole model, where no attribution is needed.
    """
    use_eager_attention(model)
    with FlopCounterMode(display=False) as counter:
        out = run()
        if train:
            out.backward()
    if train:
        return [Measurement("flops_train_step", counter.get_total_flops(), "flops")]
    per_module = defaultdict(float)
    for name, ops in counter.get_flop_counts().items():
        if name == "Global":
            continue
        # FlopCounterMode names modules "<RootClass>.<path>"; drop the root class
        path = name.split(".", 1)[1] if "." in name else ""
        per_module[strip_peft_prefix(path)] = sum(ops.values())
    rows = [Measurement("flops_forward", counter.get_total_flops(), "flops")]
    rows += _adapter_rows(per_module, model, "adapter_flops_forward")
    return rows
