"""The trial contract. A trial is one run of one model with one adapter (or none, the control), in its own
worker process, and a pure function of its config:

- `TrialConfig` holds every key a trial may have, each with its one default, and is validated when it is
  built: a wrong type or value is a `TrialConfigError` naming the key and the fix. `kind` says what the
  trial does: "measure" (parameters, FLOPs, memory and time of one training step, nothing trained),
  "train" (fine-tune on `task` and evaluate, reporting the costs `measure` names) or "interleaved" (the
  training-step times of several `adapters` on one model, taken in turn in one process).
- `TrialResult` is what running it gives: the status, the measurement rows, the error if it failed, the
  environment, and `info`, what the trial says about the model it ran (weights, head, load time).

A config travels as JSON (`to_json` / `from_json`); its `id` hashes that canonical form together with
`TRIAL_PROTOCOL`, so a result is reused exactly when the same config ran under the same protocol.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass, field

from .adapters import AdapterSpec, make_adapter, method_of, parse_adapter
from .hints import did_you_mean
from .models import HEADS, POOLINGS, origin_of
from .prompts import PROMPT_STYLES
from .store import CALIBRATED, HEAD_ONLY, IN_TURN
from .tasks import TASKS

# Part of every trial id: bump when what a config means changes, so that old results are not reused.
TRIAL_PROTOCOL = 3
# Part of a calibrated reference's id besides TRIAL_PROTOCOL: bumped when only the head's fit changes (2: an L2
# penalty chosen on validation), so that those trials alone run again.
CALIBRATION_PROTOCOL = 2
# Part of the id of a trial with `eval_every` besides TRIAL_PROTOCOL: bumped when only the choice of its step on
# validation changes (1: the best evaluation's state is restored before the test split), so that those trials
# alone run again.
STEP_CHOICE_PROTOCOL = 1
KINDS = ("train", "measure", "interleaved")
MEASUREMENTS = ("params", "flops", "memory", "time")
DTYPES = ("fp32", "bf16", "fp16")
ALLOWED = {"kind": KINDS, "dtype": DTYPES, "pooling": POOLINGS, "head": HEADS, "prompt_style": PROMPT_STYLES}
AT_LEAST_ONE = ("steps", "batch", "seq_len", "validation_examples", "test_examples", "train_examples", "repeats",
                "timeout_s", "threads")
DEVICE = re.compile(r"cpu|cuda(:\d+)?")


class TrialConfigError(ValueError):
    """A bad trial key: `key` names it, the message says why and what to write instead."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"{key}: {reason}")
        self.key, self.reason = key, reason


@dataclass(frozen=True)
class TrialConfig:
    kind: str
    model: str  # a registered name, a folder or a hub id owner/name (harness.models)
    task: str | None = None  # a key of harness.tasks.TASKS; train trials only
    adapter: AdapterSpec | None = None  # None: the control, which trains no adapter
    adapters: tuple[AdapterSpec, ...] = ()  # interleaved trials: the adapters timed against the first
    label: str | None = None  # a display name for the adapter's series in tables and figures
    target_modules: tuple[str, ...] | None = None  # None: the model type's q, k, v (harness.prepare)
    lr: float = 1e-3  # AdamW's learning rate of the adapter, for training and for the measured step alike
    head_lr: float = 1e-2  # the new head's own rate, one for every arm (harness.train)
    seed: int = 0
    measure: tuple[str, ...] = MEASUREMENTS  # which costs to report; a train trial always reports params
    profile: str | None = None  # the study profile the config came from; None for ad-hoc trials
    # training
    steps: int = 100
    batch: int = 8
    seq_len: int = 128
    eval_every: int = 0  # validation every so many steps, the step chosen on it; 0: before and after training only
    validation_examples: int | None = None  # None: the whole validation split
    test_examples: int | None = None  # None: the whole test split
    train_examples: int | None = None  # None: the task's whole training split
    max_epochs: float | None = None  # caps the steps at this many passes over the training examples
    calibrate: bool = False  # the calibrated untouched model: no adapter, the head fitted on train (harness.calibrate)
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    prompt_style: str = "llm_adapters"  # decoders: the wording of the task's prompt (harness.tasks)
    pooling: str | None = None  # None: the model's own default (harness.models)
    head: str | None = None  # measure trials: None picks the model's (harness.prepare.choose_head)
    # measurement
    repeats: int = 10  # timed steps (measure) or rounds (interleaved)
    timing_warmup: int = 2  # untimed steps before them
    # where and how it runs
    device: str = "cpu"
    dtype: str = "fp32"  # bf16 or fp16: autocast for training on CUDA
    threads: int | None = None  # torch CPU threads; None: torch's default
    timeout_s: int = 3600  # the worker process is stopped after this long
    memory_limit_gb: float | None = None  # an address-space cap on the worker process

    def __post_init__(self):
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, check_value(f.name, getattr(self, f.name)))
        self._check_together()

    def _check_together(self) -> None:
        check_model(self.model)
        check_task(self.task)
        if (self.kind == "train") != (self.task is not None):
            raise TrialConfigError("task", "a train trial needs a task, and only a train trial has one: give kind "
                                           "'train' with a task, or kind 'measure' without")
        if (self.kind == "interleaved") != bool(self.adapters):
            raise TrialConfigError("adapters", "an interleaved trial times one or more adapters, given as "
                                               "`adapters`; other kinds take one `adapter`")
        if self.adapters and self.adapter is not None:
            raise TrialConfigError("adapter", "an interleaved trial takes `adapters` only; drop `adapter`")
        if self.calibrate and (self.adapter is not None or self.kind != "train"):
            raise TrialConfigError("calibrate", "the calibrated reference is a train trial with no adapter: drop the "
                                                "adapter, or drop calibrate")
        if self.head is not None and self.kind != "measure":
            raise TrialConfigError("head", "a train trial's head follows its task; set head on measure trials only")
        if self.kind == "measure" and not self.measure:
            raise TrialConfigError("measure", f"a measure trial needs one or more of {', '.join(MEASUREMENTS)}")

    @property
    def id(self) -> str:
        versions = ({"protocol": TRIAL_PROTOCOL} | ({"calibration": CALIBRATION_PROTOCOL} if self.calibrate else {})
                    | ({"step_choice": STEP_CHOICE_PROTOCOL} if self.eval_every and not self.calibrate else {}))
        canonical = json.dumps({**versions, **self.to_json()}, sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def to_json(self) -> dict:
        """Plain JSON: the adapter as its method name (`none` for the control) and `adapter_params`."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "adapter":
                out["adapter"], out["adapter_params"] = method_of(value), dict(value.params) if value else {}
            elif f.name == "adapters":
                out["adapters"] = [spec.text for spec in value]
            else:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_json(cls, data: dict) -> "TrialConfig":
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in known | {"adapter_params"}:
                raise TrialConfigError(key, f"unknown key.{did_you_mean(key, known)} Allowed: {', '.join(known)}")
        try:
            data["adapter"] = make_adapter(data.get("adapter"), data.pop("adapter_params", None))
            data["adapters"] = tuple(parse_adapter(text) for text in data.get("adapters", ()))
        except ValueError as err:
            raise TrialConfigError("adapter", str(err)) from None
        return cls(**data)

    @property
    def arm(self) -> str:
        """What a study compares across learning rates and seeds: the adapter's label, or the reference a control is
        (`head only`: the new head trains alone; `calibrated`: the untouched model with its head fitted), or `in turn`
        for an interleaved trial, which times several adapters and trains none."""
        if self.calibrate:
            return CALIBRATED
        if self.kind == "interleaved":
            return IN_TURN
        return HEAD_ONLY if self.adapter is None else self.adapter.label

    def describe(self) -> str:
        """One line for progress logs."""
        if self.kind == "interleaved":
            return f"{self.model} interleaved step timing of {', '.join(s.label for s in self.adapters)}"
        task = f" {self.task}" if self.task else ""
        return f"{self.model}{task} {self.arm} lr={self.lr} seed={self.seed}"


FIELD_TYPES = typing.get_type_hints(TrialConfig)


def check_value(key: str, value):
    """`value` for TrialConfig's field `key`, type-checked and normalised (lists become tuples)."""
    if key not in FIELD_TYPES:
        raise TrialConfigError(key, f"unknown key.{did_you_mean(key, FIELD_TYPES)} Allowed: {', '.join(FIELD_TYPES)}")
    hint = FIELD_TYPES[key]
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise TrialConfigError(key, f"needs a value; its default is {TrialConfig.__dataclass_fields__[key].default!r}")
    expected = next(t for t in options if t is not type(None))
    base = typing.get_origin(expected) or expected
    if base is tuple:
        if not isinstance(value, (list, tuple)):
            raise TrialConfigError(key, f"expected a list, got {type(value).__name__} ({value!r})")
        item = typing.get_args(expected)[0]
        if not all(isinstance(v, item) for v in value):
            raise TrialConfigError(key, f"expected a list of {item.__name__}, got {value!r}")
        value = tuple(value)
    elif base is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    elif not isinstance(value, base) or (base is int and isinstance(value, bool)):
        raise TrialConfigError(key, f"expected {base.__name__}, got {type(value).__name__} ({value!r})")
    _check_allowed(key, value)
    return value


def check_model(model: str) -> None:
    """The registry's own error for a name that is neither registered, a folder nor a hub id owner/name."""
    try:
        origin_of(model)
    except ValueError as err:
        raise TrialConfigError("model", str(err)) from None


def check_task(task: str | None) -> None:
    if task is not None and task not in TASKS:
        raise TrialConfigError("task", f"unknown task {task!r}.{did_you_mean(task, TASKS)} Known: {', '.join(TASKS)}")


def _check_allowed(key: str, value) -> None:
    if key in ALLOWED and value not in ALLOWED[key]:
        raise TrialConfigError(key, f"unknown value {value!r}.{did_you_mean(value, ALLOWED[key])} "
                                    f"Choose from {', '.join(ALLOWED[key])}")
    if key == "measure":
        for m in value:
            if m not in MEASUREMENTS:
                raise TrialConfigError(key, f"unknown measurement {m!r}.{did_you_mean(m, MEASUREMENTS)} "
                                            f"Choose from {', '.join(MEASUREMENTS)}")
    if key in AT_LEAST_ONE and value < 1:
        raise TrialConfigError(key, f"must be 1 or more, got {value}")
    if key == "device" and not DEVICE.fullmatch(value):
        raise TrialConfigError(key, f"unknown device {value!r}; write cpu, cuda or cuda:N")


@dataclass(frozen=True)
class TrialResult:
    """What a trial gave. `rows` are Measurement dicts; `info` is what the trial says about its model."""

    status: str  # "ok" or "failed"
    rows: list = field(default_factory=list)
    error_type: str | None = None
    error: str | None = None
    traceback_tail: str | None = None
    duration_s: float | None = None
    env: dict | None = None
    device: str | None = None
    info: dict = field(default_factory=dict)
    examples: list = field(default_factory=list)  # train trials: each evaluated example's outputs

    @classmethod
    def failure(cls, error_type: str, message: str, tail: str = "") -> "TrialResult":
        return cls("failed", error_type=error_type, error=message, traceback_tail=tail)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "TrialResult":
        """From a worker's result file or a stored record (whose other keys it ignores)."""
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})
