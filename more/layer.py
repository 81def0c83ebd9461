"""The MoRe adapter layer: a frozen linear layer plus one Monarch update per adapter."""
from __future__ import annotations

import math
import warnings
from typing import Any, Optional

import torch
from torch import nn

from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge

from .ops import monarch_dense, monarch_kernel
from .shapes import MonarchShape, monarch_shape


def linear_dims(layer: nn.Module) -> tuple[int, int, bool]:
    """(in_features, out_features, fan_in_fan_out) of nn.Linear or transformers' Conv1D (GPT-2)."""
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features, False
    if type(layer).__name__ == "Conv1D" and getattr(layer, "weight", None) is not None and layer.weight.ndim == 2:
        in_features, out_features = layer.weight.shape  # Conv1D stores (in, out)
        return in_features, out_features, True
    raise ValueError(
        f"MoRe adapts linear layers only, got {type(layer).__name__}. "
        "Point target_modules at nn.Linear (or GPT-2 Conv1D) modules."
    )


def kaiming_uniform_per_block(weight: torch.Tensor) -> None:
    """nn.Linear's default init applied to each block: bound 1/sqrt(fan_in), fan_in = block width."""
    bound = 1.0 / math.sqrt(weight.shape[-1])
    with torch.no_grad():
        weight.uniform_(-bound, bound)


class MoReLayer(BaseTunerLayer):
    """Holds the factors of every adapter on one layer, keyed by adapter name.

    The parameter names keep the official layout: more_blkdiag1 (k, r, p) and more_blkdiag2 (k, s, r).
    """

    adapter_layer_names = ("more_blkdiag1", "more_blkdiag2")
    other_param_names = ("more_dropout", "more_kernel")

    def __init__(self, base_layer: nn.Module, layer_name: str = "layer", **kwargs) -> None:
        self.base_layer = base_layer
        self.layer_name = layer_name
        self.more_blkdiag1 = nn.ParameterDict({})
        self.more_blkdiag2 = nn.ParameterDict({})
        self.more_dropout = nn.ModuleDict({})
        self.more_kernel: dict[str, str] = {}
        self._disable_adapters = False
        self.merged_adapters = []
        self.kwargs = kwargs
        self.in_features, self.out_features, self.fan_in_fan_out = linear_dims(self.get_base_layer())

    def shape(self, adapter_name: str) -> MonarchShape:
        k, r, p = self.more_blkdiag1[adapter_name].shape
        return MonarchShape(self.in_features, self.out_features, k, r, p, self.more_blkdiag2[adapter_name].shape[1])

    def update_layer(self, adapter_name: str, config, inference_mode: bool = False, **kwargs) -> None:
        shape = monarch_shape(
            self.in_features, self.out_features, config.blk_r, config.nblocks, config.blk_sz, self.layer_name
        )
        device = self.get_base_layer().weight.device
        self.more_blkdiag1[adapter_name] = nn.Parameter(torch.empty(shape.w1_shape, device=device))
        self.more_blkdiag2[adapter_name] = nn.Parameter(torch.empty(shape.w2_shape, device=device))
        self.more_dropout[adapter_name] = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.more_kernel[adapter_name] = config.kernel
        self.reset_more_parameters(adapter_name, config.init_weights)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def reset_more_parameters(self, adapter_name: str, init_weights: bool = True) -> None:
        """init_weights=True: the paper's init (w2 zero, so delta = 0); False: both factors random."""
        kaiming_uniform_per_block(self.more_blkdiag1[adapter_name])
        w2 = self.more_blkdiag2[adapter_name]
        if init_weights:
            nn.init.zeros_(w2)
        else:
            kaiming_uniform_per_block(w2)

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """The dense update in the base weight's own layout: (out x in), or (in x out) for Conv1D."""
        w1, w2 = self.more_blkdiag1[adapter_name], self.more_blkdiag2[adapter_name]
        delta = monarch_dense(w1, w2, self.in_features, self.out_features)
        return (delta.T if self.fan_in_fan_out else delta).to(self.get_base_layer().weight.dtype)

    def delta_weight(self, adapter_name: Optional[str] = None) -> torch.Tensor:
        """The dense (out x in) update of an adapter (the active one by default)."""
        delta = self.get_delta_weight(adapter_name or self.active_adapters[0])
        return delta.T if self.fan_in_fan_out else delta


class MoReLinear(nn.Module, MoReLayer):
    """A linear layer with MoRe adapters."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config, layer_name: str = "layer", **kwargs) -> None:
        super().__init__()
        MoReLayer.__init__(self, base_layer, layer_name=layer_name, **kwargs)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config, inference_mode=config.inference_mode)

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        adapter_names = check_adapters_to_merge(self, adapter_names)
        base = self.get_base_layer()
        for name in adapter_names:
            if name not in self.more_blkdiag1:
                continue
            merged = base.weight.data + self.get_delta_weight(name)
            if safe_merge and not torch.isfinite(merged).all():
                raise ValueError(f"{self.layer_name}: merging adapter {name!r} gives non-finite weights.")
            base.weight.data = merged
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.")
            return
        base = self.get_base_layer()
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            if name in self.more_blkdiag1:
                base.weight.data -= self.get_delta_weight(name)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return result
        for name in self.active_adapters:
            if name not in self.more_blkdiag1:
                continue
            w1, w2 = self.more_blkdiag1[name], self.more_blkdiag2[name]
            adapter_input = self._cast_input_dtype(self.more_dropout[name](x), w1.dtype)
            multiply = monarch_kernel(self.more_kernel[name])
            result = result + multiply(adapter_input, w1, w2, self.out_features).to(result.dtype)
        return result

    def __repr__(self) -> str:
        return "more." + super().__repr__()
