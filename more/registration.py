"""Registers MoRe with PEFT, so that get_peft_model, save/load, merging and transformers' adapter API treat it
like LoRA.

PEFT's `register_peft_method` accepts only names in its `PeftType` enum, and both PEFT and transformers read
`config.peft_type.value` (transformers' `load_adapter` derives the parameter prefix from it). peft 0.21's enum
has no MORE, so `register` first adds the member `PeftType.MORE` ("MORE") to the enum, the way an enum
member is stored: in its name and value maps, its member list and as a class attribute. It then registers
through PEFT's own `register_peft_method`. `tests/more/test_peft_integration.py` fails loudly if a PEFT
upgrade changes the enum or the tables.
"""
from __future__ import annotations

from peft import mapping
from peft.utils import PeftType, register_peft_method

from .config import MORE_PEFT_TYPE, MoReConfig
from .model import MoReModel

PREFIX = MoReModel.prefix


def add_peft_type(name: str) -> PeftType:
    """The PeftType member `name`, added to the enum first when this PEFT does not know it."""
    if name in PeftType.__members__:
        return PeftType[name]
    member = str.__new__(PeftType, name)
    member._name_ = name
    member._value_ = name
    PeftType._member_map_[name] = member
    PeftType._value2member_map_[name] = member
    PeftType._member_names_.append(name)
    type.__setattr__(PeftType, name, member)
    if PeftType(name) is not member or PeftType[name] is not member or member not in list(PeftType):
        raise RuntimeError(
            f"Could not add {name} to peft's PeftType enum in this Python/PEFT version; MoRe cannot register. "
            "Install peft 0.21 (pip install 'peft>=0.21,<0.22')."
        )
    return member


def register() -> None:
    """Idempotent: safe to call again (for example after importlib.reload)."""
    peft_type = add_peft_type(MORE_PEFT_TYPE)
    if mapping.PEFT_TYPE_TO_TUNER_MAPPING.get(peft_type) is MoReModel:
        return
    for table in (mapping.PEFT_TYPE_TO_CONFIG_MAPPING, mapping.PEFT_TYPE_TO_TUNER_MAPPING,
                  mapping.PEFT_TYPE_TO_PREFIX_MAPPING):
        table.pop(peft_type, None)  # an earlier registration of a reloaded `more`
    register_peft_method(name=MORE_PEFT_TYPE.lower(), config_cls=MoReConfig, model_cls=MoReModel, prefix=PREFIX)
