"""A pytest plugin that points PEFT's own custom-model test battery at MoRe.

`test_peft_battery.py` extracts `tests/test_custom_models.py` (with `testing_common.py` and `testing_utils.py`)
from the source distribution of the installed PEFT release into a package `peft_battery` under a temporary folder,
and runs pytest on it with this plugin (`-p peft_battery_plugin`, the folder in MORE_PEFT_BATTERY_DIR). Before
collection the plugin imports the battery and replaces, in place, the case lists its tests are parametrised over
by MoRe's cases below; collection then keeps only the tests that run a MoRe config. PEFT's own test code runs
unchanged.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import sys
import types
from typing import Optional

import pytest

import more  # noqa: F401  (registers MoRe with PEFT)
from more import MoReConfig

BATTERY_PACKAGE = "peft_battery"
BATTERY_DIR_ENV = "MORE_PEFT_BATTERY_DIR"


@dataclasses.dataclass
class MoReConfigPreset(MoReConfig):
    """MoReConfig with nblocks preset to 2, for the battery's tests that build a config from target_modules alone
    (MoReConfig itself asks for nblocks or blk_sz). Sizes there are 10 -> 20 -> 2 and 256 wide."""

    nblocks: Optional[int] = 2


# (name, model of the battery, config class, config kwargs). As in PEFT's own cases, each starts as the identity
# (init_weights=True): the battery's disable/enable tests take that as given, and sets init_weights=False itself
# (through its set_init_weights_false) in the tests that need an adapter that changes the output: saving and
# loading, merging, safe merging, state dicts, FSDP. Trained biases (bias="all" and "more_only") are set by the
# battery's FSDP bias tests; a case with bias would clash with its tests that add a second adapter of the same
# config (PEFT allows one adapter with biases per model). The battery's models: MLP is 10 -> 20 -> 2,
# MLP2 10 -> 32 -> 2, MLP_LayerNorm as MLP with layer norms, EmbConv1D an embedding, a transformers Conv1D
# (5 -> 1) and a linear 10 -> 2. An output of 2 allows at most 2 blocks.
MORE_CASES = [
    ("MoRe MLP lin0 k1 r1", "MLP", MoReConfig, {"target_modules": "lin0", "nblocks": 1, "blk_r": 1}),
    ("MoRe MLP lin0 lin1 k2 r2", "MLP", MoReConfig, {"target_modules": ["lin0", "lin1"], "nblocks": 2, "blk_r": 2}),
    ("MoRe MLP lin0 k3 r4 non-divisible", "MLP", MoReConfig, {"target_modules": ["lin0"], "nblocks": 3, "blk_r": 4}),
    ("MoRe MLP lin0 save lin1", "MLP", MoReConfig,
     {"target_modules": ["lin0"], "nblocks": 2, "modules_to_save": ["lin1"]}),
    ("MoRe MLP lin0 lin1 save lin1", "MLP", MoReConfig,
     {"target_modules": ["lin0", "lin1"], "nblocks": 2, "modules_to_save": ["lin1"]}),
    ("MoRe MLP lin0 lin1 k2 r3", "MLP", MoReConfig, {"target_modules": ["lin0", "lin1"], "nblocks": 2, "blk_r": 3}),
    ("MoRe MLP2 lin0 blk_sz 4", "MLP2", MoReConfig, {"target_modules": ["lin0"], "blk_sz": 4, "blk_r": 2}),
    ("MoRe MLP_LayerNorm save layernorm0", "MLP_LayerNorm", MoReConfig,
     {"target_modules": ["lin0", "lin1"], "nblocks": 2, "modules_to_save": ["layernorm0"]}),
    ("MoRe EmbConv1D conv1d lin0", "EmbConv1D", MoReConfig,
     {"target_modules": ["conv1d", "lin0"], "nblocks": 1, "blk_r": 2}),
]

# (name, tuner method, config class, first adapter's kwargs, second adapter's kwargs), on the battery's MLP.
MORE_MULTIPLE_ACTIVE_CASES = [
    ("MoRe Same", "more", MoReConfig, {"target_modules": ["lin0"], "nblocks": 2, "init_weights": False},
     {"target_modules": ["lin0"], "nblocks": 2, "blk_r": 2, "init_weights": False}),
    ("MoRe Different", "more", MoReConfig, {"target_modules": ["lin0"], "nblocks": 2, "init_weights": False},
     {"target_modules": ["lin1"], "nblocks": 2, "init_weights": False}),
]

# The battery's case lists and what replaces each of them.
REPLACEMENTS = {
    "TEST_CASES": MORE_CASES,
    "MULTIPLE_ACTIVE_ADAPTERS_TEST_CASES": MORE_MULTIPLE_ACTIVE_CASES,
    "ALL_PEFT_CONFIG_CLASSES": [MoReConfigPreset],
}
MORE_CONFIG_CLASSES = (MoReConfig, MoReConfigPreset)


def _provide_diffusers_name() -> None:
    """testing_common imports diffusers' StableDiffusionPipeline, used only by the Stable Diffusion tests, which
    are not run here; without diffusers installed, an empty stand-in module lets the import succeed."""
    if importlib.util.find_spec("diffusers") is None:
        stand_in = types.ModuleType("diffusers")
        stand_in.StableDiffusionPipeline = type("StableDiffusionPipeline", (), {})
        sys.modules["diffusers"] = stand_in


def pytest_sessionstart(session) -> None:
    root = os.environ[BATTERY_DIR_ENV]
    sys.path.insert(0, root)
    _provide_diffusers_name()
    battery = importlib.import_module(f"{BATTERY_PACKAGE}.test_custom_models")
    for name, cases in REPLACEMENTS.items():
        target = getattr(battery, name, None)
        if not isinstance(target, list):
            raise pytest.UsageError(f"PEFT's test_custom_models.py has no list {name}; the battery changed shape.")
        target[:] = cases  # in place: the parametrize marks hold this very list


def _runs_more(item) -> bool:
    params = getattr(getattr(item, "callspec", None), "params", {})
    return params.get("config_cls") in MORE_CONFIG_CLASSES


def pytest_collection_modifyitems(config, items) -> None:
    kept = [item for item in items if _runs_more(item)]
    dropped = [item for item in items if not _runs_more(item)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = kept
