"""One trial, a pure function of its resolved config: measure the model with its adapter and, when
the trial has a task, fine-tune and evaluate it. Runs inside the worker process."""
from __future__ import annotations

import torch

from .adapters import AdapterSpec
from .measure import env
from .measure.trial import measure_trial


def adapter_of(config: dict) -> AdapterSpec | None:
    method = config.get("adapter")
    return None if method in (None, "none") else AdapterSpec.make(method, config.get("adapter_params") or {})


def run_trial(config: dict) -> dict:
    threads = config.get("threads")
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(config.get("seed", 0))
    adapter = adapter_of(config)
    rows, record = [], {}
    if config.get("task"):
        from .train import fine_tune

        rows, record = fine_tune(config, adapter)
    elif config.get("measure"):
        measured = measure_trial(
            config["model"], adapter, seq_len=config.get("seq_len", 128), batch=config.get("batch", 8),
            device=config.get("device", "cpu"), what=config["measure"], repeats=config.get("repeats", 10),
            target_modules=config.get("target_modules"), lr=config.get("lr") or 1e-4,
        )
        rows, record = [r.as_dict() for r in measured.rows], measured.record
    record.setdefault("env", env.fingerprint())
    return {"rows": rows, "record": record}
