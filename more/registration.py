"""Registers MoRe with PEFT, so that get_peft_model, save/load and merging treat it like LoRA.

peft 0.21's `register_peft_method` accepts only names already in its closed `PeftType` enum. Where the
enum knows MORE (a future PEFT), its own registration is used; otherwise the plain string "MORE" is
entered in the three tables that PEFT looks a method up in. A string key matches PeftType's str
values, and `tests/test_peft_integration.py` fails loudly if a PEFT upgrade changes these tables.
"""
from __future__ import annotations

from peft import mapping
from peft.utils import PeftType, register_peft_method

from .config import MORE_PEFT_TYPE, MoReConfig
from .model import MoReModel

PREFIX = MoReModel.prefix


def register() -> None:
    """Idempotent: safe to call again (for example after importlib.reload)."""
    if mapping.PEFT_TYPE_TO_TUNER_MAPPING.get(MORE_PEFT_TYPE) is MoReModel:
        return
    if MORE_PEFT_TYPE in {t.value for t in PeftType}:
        register_peft_method(name=MORE_PEFT_TYPE.lower(), config_cls=MoReConfig, model_cls=MoReModel, prefix=PREFIX)
        return
    tables = {
        "PEFT_TYPE_TO_CONFIG_MAPPING": MoReConfig,
        "PEFT_TYPE_TO_TUNER_MAPPING": MoReModel,
        "PEFT_TYPE_TO_PREFIX_MAPPING": PREFIX,
    }
    for table_name, value in tables.items():
        table = getattr(mapping, table_name, None)
        if not isinstance(table, dict):
            raise RuntimeError(
                f"peft.mapping.{table_name} is missing in this PEFT version; MoRe cannot register. "
                "Install peft 0.21 (pip install 'peft>=0.21,<0.22')."
            )
        table[MORE_PEFT_TYPE] = value
