"""What a study plans with, read off the model's config on the meta device: the (in, out) sizes of the layers it
adapts, and an adapter's trainable parameters, counted on the real PEFT model built there (the same
`apply_adapter` and `parameter_counts` a trial uses). No weights are loaded, so planning a study (parameter
matching, dry runs) costs seconds."""
from __future__ import annotations

import functools
import re

import torch
import transformers
from torch import nn

from more.layer import linear_dims

from .adapters import AdapterSpec
from .measure.params import parameter_counts
from .measure.records import value_of
from .models import PAPER_SUFFIX, build_paper_scale, model_source, origin_of
from .prepare import apply_adapter, default_targets


def _config_model(name: str) -> nn.Module:
    if origin_of(name) == "paper_scale":
        return build_paper_scale(name.removesuffix(PAPER_SUFFIX))
    config = transformers.AutoConfig.from_pretrained(model_source(name))
    with torch.device("meta"):
        return transformers.AutoModel.from_config(config)


def matches(name: str, targets) -> bool:
    """PEFT's rule: a string is a regex on the full name; a list matches names or name suffixes."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith(f".{t}") for t in targets)


@functools.lru_cache(maxsize=None)
def _target_layer_sizes(name: str, targets: tuple | str | None) -> tuple[tuple[int, int], ...]:
    model = _config_model(name)
    targets = targets if targets is not None else tuple(default_targets(model))
    sizes = []
    for module_name, module in model.named_modules():
        if module_name and matches(module_name, targets if isinstance(targets, str) else list(targets)):
            try:
                in_features, out_features, _ = linear_dims(module)
            except ValueError:
                continue
            sizes.append((in_features, out_features))
    if not sizes:
        raise ValueError(f"target modules {targets} match no linear layer of {name!r}")
    return tuple(sizes)


def layer_sizes(model_name: str, target_modules=None) -> list[tuple[int, int]]:
    """(in_features, out_features) of each layer the adapter goes on; `None`: the default targets."""
    key = tuple(target_modules) if isinstance(target_modules, (list, tuple)) else target_modules
    return list(_target_layer_sizes(model_name, key))


class AdapterBuildError(ValueError):
    """An adapter that PEFT cannot put on this model (an unsupported layer, a size that does not divide, ...)."""


@functools.lru_cache(maxsize=None)
def _count_adapter_params(name: str, targets: tuple | str | None, spec_text: str) -> tuple[int | None, str]:
    """(count, "") or (None, why it cannot be built): failures are cached too, so a plan asks PEFT once."""
    try:
        model = apply_adapter(_config_model(name), AdapterSpec.parse(spec_text), "base", targets)
    except Exception as err:  # noqa: BLE001 - whatever PEFT raises is the reason the plan reports
        return None, f"{type(err).__name__}: {err}"
    return int(value_of(parameter_counts(model), "adapter_params")), ""


def adapter_params(model_name: str, target_modules, spec: AdapterSpec) -> int:
    """The adapter's trainable parameters on this model's target layers (`None`: the default targets), as a trial
    counts them (`adapter_params`; a new head is not included), from the model built on the meta device.
    Raises AdapterBuildError, with PEFT's reason, when the adapter cannot be built on the model."""
    key = tuple(target_modules) if isinstance(target_modules, (list, tuple)) else target_modules
    count, reason = _count_adapter_params(model_name, key, spec.text)
    if count is None:
        raise AdapterBuildError(f"{spec.label} cannot be built on {model_name}: {reason}")
    return count
