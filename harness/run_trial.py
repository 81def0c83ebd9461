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
    if config.get("kind") == "interleaved":
        rows, record = interleaved_timing(config)
    elif config.get("task"):
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


def interleaved_timing(config: dict) -> tuple[list[dict], dict]:
    """Training-step time of several adapters on one model, measured in turn (A, B, A, B, ...) in this one
    process, each against the first: the noise of a shared machine hits all of them alike."""
    from .measure import timing
    from .measure.trial import device_of, loss_of, prepare_model, synthetic_batch

    steps, labels = {}, []
    for text in config["adapters"]:
        spec = AdapterSpec.parse(text)
        model, _, info = prepare_model(config["model"], spec, config.get("device", "cpu"),
                                       target_modules=config.get("target_modules"))
        model.train()
        inputs = synthetic_batch(model, config.get("batch", 8), config.get("seq_len", 128), info.head,
                                 torch.device(device_of(model)))
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def step(model=model, inputs=inputs, optimizer=optimizer):
            optimizer.zero_grad(set_to_none=True)
            loss_of(model, inputs).backward()
            optimizer.step()

        steps[spec.label] = step
        labels.append(spec.label)
    samples = timing.interleaved(steps, torch.device(config.get("device", "cpu")), warmup=2, rounds=config.get("repeats", 10))
    rows = [r.as_dict() for r in timing.ratio_rows(samples, labels[0])]
    for label, times in samples.items():
        rows += [dict(r.as_dict(), scope=label) for r in timing.summary_rows("time_step_s", times)]
    return rows, {"adapters": labels, "env": env.fingerprint(), "device": config.get("device", "cpu")}
