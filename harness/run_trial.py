"""Runs one trial, a pure function of its config, inside the worker process (or in this one, for
`harness measure`): a measure trial measures its prepared model, a train trial fine-tunes and evaluates
it (harness.train), an interleaved trial times several adapters' training steps against each other."""
from __future__ import annotations

import dataclasses
import time

import torch

from .measure import env, memory, timing
from .measure.costs import device_of, measure_costs, synthetic_batch, training_step
from .prepare import prepare_model
from .train import fine_tune
from .trial import TrialConfig, TrialResult


def run_trial(config: TrialConfig) -> TrialResult:
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    if config.kind == "train":
        rows, info, examples = fine_tune(config)
    else:
        rows, info = {"measure": measure, "interleaved": interleaved_timing}[config.kind](config)
        examples = []
    device = info.pop("device")
    return TrialResult("ok", rows, env=env.fingerprint(), device=device, info=info, examples=examples)


def measure(config: TrialConfig) -> tuple[list[dict], dict]:
    started = time.perf_counter()
    model, _, model_info = prepare_model(config, config.adapter)
    load_seconds = time.perf_counter() - started
    rows = measure_costs(model, config.adapter is not None, config.seq_len, config.batch, config.measure,
                         config.repeats, config.timing_warmup, config.lr, model_info.head)
    info = {"model_info": dataclasses.asdict(model_info), "adapter": config.adapter.label if config.adapter else None,
            "load_seconds": load_seconds, "allocator": memory.allocator_settings(), "device": device_of(model)}
    return [r.as_dict() for r in rows], info


def interleaved_timing(config: TrialConfig) -> tuple[list[dict], dict]:
    """Training-step time of several adapters on one model, measured in turn (A, B, A, B, ...) in this one
    process, each against the first: the noise of a shared machine hits all of them alike."""
    steps = {}
    for spec in config.adapters:
        model, _, info = prepare_model(config, spec)
        model.train()
        inputs = synthetic_batch(model, config.batch, config.seq_len, info.head, torch.device(device_of(model)))
        steps[spec.label], _ = training_step(model, inputs, config.lr)
    labels = list(steps)
    samples = timing.interleaved(steps, torch.device(config.device), warmup=config.timing_warmup,
                                 rounds=config.repeats)
    rows = [r.as_dict() for r in timing.ratio_rows(samples, labels[0])]
    for label, times in samples.items():
        rows += [dict(r.as_dict(), scope=label) for r in timing.summary_rows("time_step_s", times)]
    return rows, {"adapters": labels, "device": config.device}
