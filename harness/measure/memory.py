"""Memory of one training step: measured (CUDA allocator, or the process's peak RSS on CPU) and
estimated analytically from the tensors a step must hold.

CPU: the trial runs in a fresh process. Linux lets a process reset its own peak RSS (VmHWM) by
writing 5 to /proc/self/clear_refs, so the peak of the measured step is its own, not the model
load's. tracemalloc does not see torch's allocations and is not used.
"""
from __future__ import annotations

import os
import resource
import weakref
from typing import Callable

import psutil
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from .records import Measurement, not_measured


def current_rss() -> int:
    return psutil.Process().memory_info().rss


def reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def trainable_state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> int:
    """Bytes of trainable parameters, their gradients and the optimizer's state, read off the tensors."""
    total = 0
    for p in model.parameters():
        if p.requires_grad:
            total += tensor_bytes(p) + (tensor_bytes(p.grad) if p.grad is not None else 0)
            if optimizer is not None:
                total += sum(tensor_bytes(s) for s in optimizer.state.get(p, {}).values() if torch.is_tensor(s) and s.dim() > 0)
    return total


def saved_activation_bytes(model: nn.Module, run: Callable[[], torch.Tensor]) -> int:
    """Bytes autograd keeps for the backward pass of `run()`: each storage once (views share one),
    parameters excluded (they are the weights). Works on the meta device too."""

    def storage_key(t):  # the C++ storage object: one per storage, also for meta tensors with no address
        return t.untyped_storage()._cdata

    param_storages = {storage_key(p) for p in model.parameters()}
    saved = {}

    def pack(t):
        key = storage_key(t)
        if key not in param_storages:
            saved[key] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run()
    del out
    return sum(saved.values())


def analytic_estimate(model: nn.Module, activation_bytes: int) -> list[Measurement]:
    """Weights, and what a step adds on top: gradients and AdamW's two moments of the trainable
    parameters (in their dtype), plus the activations autograd saves."""
    weights = sum(tensor_bytes(p) for p in {id(p): p for p in model.parameters()}.values())
    trainable = sum(tensor_bytes(p) for p in model.parameters() if p.requires_grad)
    step = trainable + 2 * trainable + activation_bytes
    return [
        Measurement("estimate_weights_bytes", weights, "bytes"),
        Measurement("estimate_grad_bytes", trainable, "bytes"),
        Measurement("estimate_adamw_state_bytes", 2 * trainable, "bytes"),
        Measurement("estimate_activation_bytes", activation_bytes, "bytes"),
        Measurement("estimate_step_bytes", step, "bytes"),
    ]


def baseline_memory(device: torch.device) -> int:
    """What the process holds right after the model loads, before any step: the baseline."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.memory_allocated(device)
    return current_rss()


def measure_step_memory(step: Callable[[], None], device: torch.device, baseline: int) -> list[Measurement]:
    """Peak memory of one full step (forward, backward, optimizer) after a warm-up step.

    `baseline` is taken after the model loads, before anything ran, and is reported apart; the peak
    minus that baseline is what training adds (gradients, optimizer state, activations).
    """
    if device.type == "cuda":
        step()  # warm-up: optimizer state and allocator caches
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        allocated = torch.cuda.max_memory_allocated(device)
        return [
            Measurement("baseline_memory_allocated_bytes", baseline, "bytes"),
            Measurement("peak_memory_allocated_bytes", allocated, "bytes"),
            Measurement("peak_memory_reserved_bytes", torch.cuda.max_memory_reserved(device), "bytes"),
            Measurement("step_memory_allocated_bytes", allocated - baseline, "bytes"),
            not_measured("peak_rss_bytes", "bytes", "CPU measurement; this trial ran on CUDA"),
        ]
    step()
    exact = reset_peak_rss()
    step()
    peak = peak_rss()
    note = "" if exact else "VmHWM reset unavailable: peak is the process lifetime peak"
    return [
        Measurement("baseline_rss_bytes", baseline, "bytes"),
        Measurement("peak_rss_bytes", peak, "bytes", note=note),
        Measurement("step_rss_bytes", peak - baseline, "bytes", note=note),
        not_measured("peak_memory_allocated_bytes", "bytes", "CUDA only"),
        not_measured("peak_memory_reserved_bytes", "bytes", "CUDA only"),
    ]


def allocator_settings() -> dict:
    return {"PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")}


class LiveTensorBytes(TorchDispatchMode):
    """Peak bytes held by the storages that ops allocate while the mode is on: torch's own allocations, the CPU
    counterpart of CUDA's max_memory_allocated, free of the C allocator's caching that inflates RSS.

    A storage counts once, when an op first returns it, and only if it is new: an output that shares the storage
    of one of the op's inputs (a view such as a Linear's `aten.t` of its weight, or an in-place op) allocates
    nothing. It stays counted until the storage itself is freed (a finalizer on the storage object, which lives
    as long as its C++ storage), so a tensor that only autograd keeps alive for the backward stays counted.
    """

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._sizes: dict[int, int] = {}  # live storages this mode counted: key -> bytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {_storage_key(t) for t in _tensors((args, kwargs))}
        for t in _tensors(out):
            key = _storage_key(t)
            if key in inputs or key in self._sizes:
                continue
            storage = t.untyped_storage()
            self._sizes[key] = storage.nbytes()
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._free, key)
        return out

    def _free(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)


def _tensors(tree) -> list[torch.Tensor]:
    return [t for t in torch.utils._pytree.tree_leaves(tree) if isinstance(t, torch.Tensor) and t.device.type != "meta"]


def _storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


def peak_tensor_bytes(step: Callable[[], None]) -> int:
    """The peak of what one call of `step` allocates in tensors (already-held tensors not counted)."""
    with LiveTensorBytes() as tracker:
        step()
    return tracker.peak
