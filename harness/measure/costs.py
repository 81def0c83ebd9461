"""The costs of a prepared model's training step, before any training: parameters, FLOPs, memory, time.

Inputs are token ids drawn uniformly from the vocabulary with a fixed seed: costs do not depend
on which tokens they are. The training step is forward, loss, backward and an AdamW step, with the
head the model was prepared with (harness.prepare).
"""
from __future__ import annotations

import torch
from torch import nn

from . import flops, memory, params, timing
from .records import Measurement, not_measured

CUDA_ONLY = {"peak_memory_allocated_bytes", "peak_memory_reserved_bytes"}


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


def device_of(model: nn.Module) -> str:
    return str(next(model.parameters()).device)


def training_step(model: nn.Module, inputs: dict, lr: float):
    """One training step on `inputs` (forward, loss, backward, AdamW) as a callable, and its optimizer;
    (None, None) where nothing can run: the meta device, or nothing trainable."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable or device_of(model) == "meta":
        return None, None
    optimizer = torch.optim.AdamW(trainable, lr=lr)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss_of(model, inputs).backward()
        optimizer.step()

    return step, optimizer


def measure_costs(model: nn.Module, has_adapter: bool, seq_len: int, batch: int, what, repeats: int,
                  warmup: int, lr: float, head: str) -> list[Measurement]:
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

    step, optimizer = training_step(model, inputs, lr)
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
