"""Parameter counts: trainable, total, share, per adapted module, and the adapter's saved size."""
from __future__ import annotations

import os
import tempfile

import torch
from peft import get_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import save_file
from torch import nn

from .records import Measurement, not_measured


def _unique_parameters(model: nn.Module):
    seen = set()
    for param in model.parameters():
        if id(param) not in seen:  # tied weights count once
            seen.add(id(param))
            yield param


def adapted_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every PEFT tuner layer, names relative to the base model."""
    return [(strip_peft_prefix(name), m) for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)]


def strip_peft_prefix(name: str) -> str:
    return name.removeprefix("base_model.model.")


def parameter_counts(model: nn.Module) -> list[Measurement]:
    params = list(_unique_parameters(model))
    trainable = sum(p.numel() for p in params if p.requires_grad)
    total = sum(p.numel() for p in params)
    rows = [
        Measurement("trainable_params", trainable, "params"),
        Measurement("total_params", total, "params"),
        Measurement("trainable_share", 100.0 * trainable / total if total else float("nan"), "percent"),
    ]
    adapted = 0
    for name, layer in adapted_modules(model):
        count = sum(p.numel() for n, p in layer.named_parameters() if p.requires_grad and "base_layer" not in n)
        adapted += count
        rows.append(Measurement("trainable_params", count, "params", scope=name))
    rows.append(Measurement("adapter_params", adapted, "params"))
    # newly initialised heads and other modules_to_save: trained, so counted, and named apart
    rows.append(Measurement("other_trainable_params", trainable - adapted, "params"))
    rows.append(Measurement("adapted_modules", len(adapted_modules(model)), "modules"))
    return rows


def adapter_file_bytes(model: nn.Module, adapter_name: str = "default") -> Measurement:
    """Size of adapter_model.safetensors as save_pretrained writes it.

    The tensors come from PEFT's own get_peft_model_state_dict; meta tensors (paper-scale models with
    no weights) are replaced by empty CPU tensors of the same shape and dtype, since the file size
    depends only on names, shapes and dtypes.
    """
    state = get_peft_model_state_dict(model, adapter_name=adapter_name)
    tensors = {
        k: (torch.empty(v.shape, dtype=v.dtype) if v.device.type == "meta" else v.detach().cpu().contiguous())
        for k, v in state.items()
    }
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "adapter_model.safetensors")
        save_file(tensors, path, metadata={"format": "pt"})
        return Measurement("adapter_file_bytes", os.path.getsize(path), "bytes")


def parameter_rows(model: nn.Module, has_adapter: bool) -> list[Measurement]:
    """The counts and the saved adapter's size; without an adapter the size is not measured, never 0."""
    size = adapter_file_bytes(model) if has_adapter else not_measured("adapter_file_bytes", "bytes", "no adapter")
    return parameter_counts(model) + [size]
