"""The (in, out) sizes of the layers a study adapts, read off the model's config on the meta device:
no weights are loaded, so planning a study (parameter matching, dry runs) costs seconds."""
from __future__ import annotations

import functools
import re

import torch
from torch import nn

from more.layer import linear_dims


def _config_model(name: str) -> nn.Module:
    import transformers

    from .models import PAPER_SUFFIX, build_paper_scale, minilm_path, smollm2_path

    if name.endswith(PAPER_SUFFIX):
        return build_paper_scale(name.removesuffix(PAPER_SUFFIX))
    source = {"minilm": minilm_path, "smollm2": smollm2_path}.get(name, lambda: name)()
    config = transformers.AutoConfig.from_pretrained(source)
    with torch.device("meta"):
        return transformers.AutoModel.from_config(config)


def matches(name: str, targets) -> bool:
    """PEFT's rule: a string is a regex on the full name; a list matches names or name suffixes."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith(f".{t}") for t in targets)


@functools.lru_cache(maxsize=None)
def _dims(name: str, targets: tuple | str | None) -> tuple[tuple[int, int], ...]:
    from .measure.trial import default_targets

    model = _config_model(name)
    targets = targets if targets is not None else tuple(default_targets(model))
    dims = []
    for module_name, module in model.named_modules():
        if module_name and matches(module_name, targets if isinstance(targets, str) else list(targets)):
            try:
                in_features, out_features, _ = linear_dims(module)
            except ValueError:
                continue
            dims.append((in_features, out_features))
    if not dims:
        raise ValueError(f"target modules {targets} match no linear layer of {name!r}")
    return tuple(dims)


def layer_dims(model_name: str, target_modules=None) -> list[tuple[int, int]]:
    key = tuple(target_modules) if isinstance(target_modules, list) else target_modules
    return list(_dims(model_name, key))
