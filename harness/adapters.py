"""Adapter specs: "more:nblocks=4,blk_r=4", "lora:r=8,alpha=16", or any PEFT method by name.

A spec is a method name plus fields of that method's PEFT config. It turns into the PeftConfig
(`AdapterSpec.peft_config`) and into closed-form trainable-parameter counts, computed before
anything is built, so studies can plan and match parameters.
"""
from __future__ import annotations

import ast
import dataclasses
from dataclasses import dataclass, field

from peft import mapping

import more  # noqa: F401  (registers "more" with PEFT)
from more.shapes import lora_params, monarch_shape

from .hints import did_you_mean

# Short names users type, mapped to the config field they mean.
ALIASES = {"lora": {"alpha": "lora_alpha", "dropout": "lora_dropout"}}
# The method name of the control, which trains no adapter: it stands for `None` wherever a spec may be.
NO_ADAPTER = "none"


def known_methods() -> list[str]:
    return sorted(str(getattr(key, "value", key)).lower() for key in mapping.PEFT_TYPE_TO_CONFIG_MAPPING)


def config_class(method: str):
    for key, cls in mapping.PEFT_TYPE_TO_CONFIG_MAPPING.items():
        if str(getattr(key, "value", key)).lower() == method:
            return cls
    raise ValueError(f"Unknown adapter {method!r}.{did_you_mean(method, known_methods())} Known adapters: {', '.join(known_methods())}.")


def _parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word, e.g. init=paper


def _split(text: str) -> tuple[str, dict]:
    """'lora:r=8' -> ('lora', {'r': 8}), unvalidated."""
    method, _, rest = text.strip().partition(":")
    params = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"Adapter {text!r}: {item!r} is not key=value. Write e.g. 'lora:r=8,alpha=16'.")
        params[key.strip()] = _parse_value(value.strip())
    return method.strip().lower(), params


@dataclass(frozen=True)
class AdapterSpec:
    method: str
    params: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> "AdapterSpec":
        """'more:nblocks=4,blk_r=4' -> AdapterSpec('more', {'nblocks': 4, 'blk_r': 4})."""
        spec = parse_adapter(text)
        if spec is None:
            raise ValueError(f"Adapter {text!r} is the control, not an adapter; write e.g. 'lora:r=8'.")
        return spec

    @classmethod
    def make(cls, method: str, params: dict) -> "AdapterSpec":
        """Validates the method and its fields; applies aliases and the harness's defaults."""
        config_cls = config_class(method)
        aliases = ALIASES.get(method, {})
        params = {aliases.get(k, k): v for k, v in params.items()}
        fields = {f.name for f in dataclasses.fields(config_cls)}
        for key in params:
            if key not in fields:
                hint = did_you_mean(key, sorted(fields) + sorted(aliases))
                raise ValueError(f"Adapter {method!r} has no parameter {key!r}.{hint}")
        if method == "lora":
            params.setdefault("r", 8)
            params.setdefault("lora_alpha", 2 * params["r"])  # scaling alpha/r = 2 at every rank
        if method == "more" and "blk_sz" not in params:
            params.setdefault("nblocks", 4)
        return cls(method, dict(sorted(params.items())))

    @property
    def label(self) -> str:
        return f"{self.method}(" + ",".join(f"{k}={v}" for k, v in self.params.items()) + ")"

    @property
    def text(self) -> str:
        """The spec as parse() reads it back: 'lora:lora_alpha=16,r=8'."""
        return f"{self.method}:" + ",".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in self.params.items())

    def peft_config(self, target_modules=None, modules_to_save=None, task_type=None):
        params = dict(self.params)
        if target_modules is not None:
            params["target_modules"] = list(target_modules)
        if modules_to_save is not None:
            params["modules_to_save"] = list(modules_to_save)
        if task_type is not None:
            params["task_type"] = task_type
        return config_class(self.method)(**params)

    def _monarch_shapes(self, layers: list[tuple[int, int]]):
        params = self.params
        return [monarch_shape(i, o, params.get("blk_r", 4), params.get("nblocks"), params.get("blk_sz")) for i, o in layers]

    def closed_form_params(self, layers: list[tuple[int, int]]) -> int | None:
        """Trainable parameters on linear layers of these (in, out) sizes; None where no closed form is known."""
        if self.method == "more":
            return sum(shape.trainable_params for shape in self._monarch_shapes(layers))
        if self.method == "lora":
            return sum(lora_params(i, o, self.params["r"]) for i, o in layers)
        return None

    def closed_form_forward_flops(self, layers: list[tuple[int, int]], tokens: int) -> int | None:
        """Forward FLOPs of the adapter's own products (a multiply-add counts 2)."""
        if self.method == "more":
            return sum(shape.forward_flops(tokens) for shape in self._monarch_shapes(layers))
        params = self.closed_form_params(layers)  # LoRA: two products, one multiply-add per parameter and token
        return None if params is None else 2 * tokens * params



def make_adapter(method: str | None, params: dict | None = None) -> AdapterSpec | None:
    """The one place where the control's name is read: `none` (or no method) is `None`, no adapter."""
    if method in (None, NO_ADAPTER):
        if params:
            raise ValueError(f"The control {NO_ADAPTER!r} takes no parameters, got {params}.")
        return None
    return AdapterSpec.make(method, params or {})


def parse_adapter(text: str) -> AdapterSpec | None:
    """'more:nblocks=4,blk_r=4' -> its spec; 'none' -> None, the control."""
    return make_adapter(*_split(text))


def method_of(spec: AdapterSpec | None) -> str:
    """The method name a table shows: the spec's, or `none` for the control."""
    return NO_ADAPTER if spec is None else spec.method


# ---- how results name adapters: display names for figures and tables ------------------------------------

# The method as readers know it; "none" is the control that trains no adapter.
DISPLAY_NAMES = {"more": "MoRe", "lora": "LoRA", NO_ADAPTER: "no adapter"}
# Short names of the settings that tell one configuration from another: "MoRe k=4 r=4", "LoRA r=8".
SETTING_SHORT_NAMES = {"nblocks": "k", "blk_sz": "b", "blk_r": "r", "r": "r"}


def series_name(method, label=None) -> str:
    """The series a trial belongs to: its method's display name, with the study's label when it has one
    ("MoRe", "LoRA", "MoRe (square blocks)")."""
    name = DISPLAY_NAMES.get(method, str(method))
    return f"{name} ({label})" if isinstance(label, str) and label else name
