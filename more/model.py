"""MoReModel: the PEFT tuner that puts MoRe adapters on a model's linear layers."""
from __future__ import annotations

import torch
from torch import nn

from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer

from .config import TRANSFORMERS_MODELS_TO_MORE_TARGET_MODULES
from .layer import MoReLayer, MoReLinear, linear_dims


class MoReModel(BaseTuner):
    """Creates MoRe adapters on a model; used through `peft.get_peft_model(model, MoReConfig(...))`."""

    prefix: str = "more_"
    tuner_layer_cls = MoReLayer
    target_module_mapping = TRANSFORMERS_MODELS_TO_MORE_TARGET_MODULES

    def _pre_injection_hook(self, model: nn.Module, config, adapter_name: str) -> None:
        """Fail early, naming what exists, when target_modules match no module at all."""
        if config.target_modules is None:
            return
        names = [name for name, _ in model.named_modules() if name]
        if any(self._check_target_module_exists(config, name) for name in names):
            return
        linear = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if _is_linear(m)})
        raise ValueError(
            f"MoRe target_modules={sorted(config.target_modules) if not isinstance(config.target_modules, str) else config.target_modules!r} "
            f"match no module of {type(model).__name__}. Its linear layers are named: {', '.join(linear) or 'none'}. "
            "Set target_modules to some of these names."
        )

    def _create_and_replace(self, config, adapter_name, target, target_name, parent, current_key, **kwargs):
        if isinstance(target, MoReLinear):
            target.update_layer(adapter_name, config, inference_mode=config.inference_mode)
            return
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        try:
            linear_dims(base)
        except ValueError as err:
            raise ValueError(f"{current_key}: {err}") from None
        new_module = MoReLinear(target, adapter_name, config, layer_name=current_key)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)  # an added adapter is not trainable until it is set active
        self._replace_module(parent, target_name, new_module, target)


def _is_linear(module: nn.Module) -> bool:
    try:
        linear_dims(module)
    except ValueError:
        return False
    return True
