"""Measure one model with one adapter, before any training: parameters, FLOPs, memory, time.

Inputs are token ids drawn uniformly from the vocabulary with a fixed seed: costs do not depend
on which tokens they are. The training step is forward, loss, backward and an AdamW step, with the
head the model's trials use (sequence classification for encoders, causal LM for decoders).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Iterable

import peft
import torch
from torch import nn

from ..adapters import AdapterSpec
from . import env, flops, memory, params, timing
from .records import Measurement, not_measured

ALL_MEASUREMENTS = ("params", "flops", "memory", "time")
CUDA_ONLY = {"peak_memory_allocated_bytes", "peak_memory_reserved_bytes"}


@dataclass
class TrialMeasurement:
    rows: list[Measurement]
    record: dict = field(default_factory=dict)


def synthetic_batch(model: nn.Module, batch: int, seq_len: int, head: str, device: torch.device, seed: int = 0) -> dict:
    config = model.config
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, config.vocab_size, (batch, seq_len), generator=generator)
    inputs = {"input_ids": input_ids}
    if device.type != "meta":  # on meta, mask checks that read values (.item()) cannot run; all-ones is the default
        inputs["attention_mask"] = torch.ones_like(input_ids)
    if head == "causal_lm":
        inputs["labels"] = input_ids.clone()
    elif head == "sequence_classification":
        inputs["labels"] = torch.randint(0, config.num_labels, (batch,), generator=generator)
    return {k: v.to(device) for k, v in inputs.items()}


def loss_of(model: nn.Module, inputs: dict) -> torch.Tensor:
    out = model(**inputs)
    if getattr(out, "loss", None) is not None:
        return out.loss
    return flops.model_output(out).float().pow(2).mean()  # a headless model: any scalar of its output


def default_targets(model: nn.Module) -> list[str]:
    """The paper's q, k, v for every adapter alike, so that methods are compared on the same layers."""
    from more.config import TRANSFORMERS_MODELS_TO_MORE_TARGET_MODULES

    model_type = model.config.model_type
    if model_type not in TRANSFORMERS_MODELS_TO_MORE_TARGET_MODULES:
        raise ValueError(f"No default target modules for model type {model_type!r}; pass target modules explicitly.")
    return TRANSFORMERS_MODELS_TO_MORE_TARGET_MODULES[model_type]


def new_heads(model: nn.Module, head: str) -> list[str]:
    """A classification or multiple-choice head is newly initialised: it is trained, saved and counted."""
    if head not in ("sequence_classification", "multiple_choice"):
        return []
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    return [n for n in ("classifier", "score") if n in names]


def apply_adapter(model: nn.Module, spec: AdapterSpec | None, head: str, target_modules=None) -> nn.Module:
    if spec is None:
        return model
    target_modules = target_modules or default_targets(model)
    task_type = "CAUSAL_LM" if head == "causal_lm" else None
    config = spec.peft_config(target_modules=target_modules, modules_to_save=new_heads(model, head) or None,
                              task_type=task_type)
    return peft.get_peft_model(model, config)


def prepare_model(model_name: str, adapter: AdapterSpec | None, device: str = "cpu", head: str | None = None,
                  target_modules=None, num_labels: int | None = None):
    """Loads a model with its head and puts the adapter on it: (model, tokenizer, info)."""
    from ..models import is_decoder, load_model

    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda was asked for, but no CUDA device is available here. Use device cpu.")
    if head is None:
        head = "causal_lm" if is_decoder(model_name) else "sequence_classification"
    if head == "sequence_classification" and num_labels is None:
        num_labels = 2
    model, tokenizer, info = load_model(model_name, head=head, num_labels=num_labels,
                                        device=None if model_name.endswith("@paper") and dev.type == "cpu" else device)
    return apply_adapter(model, adapter, info.head, target_modules), tokenizer, info


def measure_trial(
    model_name: str,
    adapter: AdapterSpec | None,
    seq_len: int = 128,
    batch: int = 8,
    device: str = "cpu",
    what: Iterable[str] = ALL_MEASUREMENTS,
    repeats: int = 10,
    warmup: int = 2,
    threads: int | None = None,
    target_modules: list[str] | None = None,
    head: str | None = None,
    lr: float = 1e-4,
) -> TrialMeasurement:
    what = set(what)
    unknown = what - set(ALL_MEASUREMENTS)
    if unknown:
        raise ValueError(f"Unknown measurement(s) {sorted(unknown)}; choose from {', '.join(ALL_MEASUREMENTS)}.")
    if threads is not None:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    model, _tokenizer, info = prepare_model(model_name, adapter, device, head, target_modules)
    load_seconds = time.perf_counter() - started
    rows = measure_model(model, adapter is not None, seq_len, batch, what, repeats, warmup, lr, info.head)
    record = {
        "model": model_name,
        "model_info": dataclasses.asdict(info),
        "adapter": adapter.label if adapter else None,
        "head": info.head,
        "seq_len": seq_len,
        "batch": batch,
        "device": device_of(model),
        "repeats": repeats,
        "warmup": warmup,
        "load_seconds": load_seconds,
        "allocator": memory.allocator_settings(),
        "env": env.fingerprint(),
    }
    return TrialMeasurement(rows, record)


def device_of(model: nn.Module) -> str:
    return str(next(model.parameters()).device)


def measure_model(model: nn.Module, has_adapter: bool, seq_len: int, batch: int, what, repeats: int = 10,
                  warmup: int = 2, lr: float = 1e-4, head: str = "causal_lm") -> list[Measurement]:
    """The measurements of a prepared model on a synthetic batch, in an order that keeps memory clean:
    parameters, then memory (the step's peak over the post-load baseline), time, and FLOPs last."""
    on_meta = device_of(model) == "meta"
    dev = torch.device(device_of(model))
    baseline = None if on_meta else memory.baseline_memory(dev)
    inputs = synthetic_batch(model, batch, seq_len, head, dev)
    tokens = batch * seq_len
    rows: list[Measurement] = [Measurement("tokens_per_batch", tokens, "tokens")]

    if "params" in what:
        rows += params.parameter_rows(model, has_adapter)

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr) if trainable and not on_meta else None

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss_of(model, inputs).backward()
        optimizer.step()

    if "memory" in what:
        model.train()
        activations = memory.saved_activation_bytes(model, lambda: loss_of(model, inputs))
        rows += memory.analytic_estimate(model, activations)
        if on_meta or optimizer is None:
            reason = "meta device: no memory to measure" if on_meta else "nothing trainable"
            rows += [not_measured(m, "bytes", reason) for m in ("peak_rss_bytes", *sorted(CUDA_ONLY))]
        else:
            rows += memory.measure_step_memory(step, dev, baseline)
            rows.append(Measurement("peak_tensor_bytes", memory.peak_tensor_bytes(step), "bytes",
                                    note="tensors one step allocates, at their peak"))
            rows.append(Measurement("trainable_state_bytes", memory.trainable_state_bytes(model, optimizer), "bytes"))

    if "time" in what:
        if on_meta or optimizer is None:
            rows.append(not_measured("time_step_s", "s", "meta device: nothing runs" if on_meta else "nothing trainable"))
        else:
            rows += _time_step(model, inputs, optimizer, dev, warmup, repeats, tokens)

    if "flops" in what:
        rows += _count_flops(model, inputs, on_meta)
    return rows


def _time_step(model, inputs, optimizer, dev, warmup, repeats, tokens) -> list[Measurement]:
    model.train()
    state = {}

    def forward():
        optimizer.zero_grad(set_to_none=True)
        state["loss"] = loss_of(model, inputs)

    phases = [("forward", forward), ("backward", lambda: state["loss"].backward()), ("optimizer", optimizer.step)]
    samples = timing.time_phases(phases, dev, warmup=warmup, repeats=repeats)
    step_samples = [sum(parts) for parts in zip(*samples.values())]
    rows = []
    for name, values in samples.items():
        rows += timing.summary_rows(f"time_{name}_s", values)
    rows += timing.summary_rows("time_step_s", step_samples)
    rows += timing.summary_rows("tokens_per_s", [tokens / s for s in step_samples], unit="tokens/s")
    return rows


def _count_flops(model, inputs, on_meta) -> list[Measurement]:
    rows = []
    model.eval()
    forward_inputs = {k: v for k, v in inputs.items() if k != "labels"}
    with torch.no_grad():
        rows += flops.counter_flops(model, lambda: loss_of(model, forward_inputs), train=False)
    model.train()
    rows += flops.counter_flops(model, lambda: loss_of(model, inputs), train=True)
    model.zero_grad(set_to_none=True)
    if on_meta:
        rows.append(not_measured("flops_forward_fvcore", "flops", "fvcore traces real tensors; meta device"))
    else:
        model.eval()
        rows += flops.fvcore_forward_flops(model, inputs["input_ids"], inputs["attention_mask"])
    return rows
