"""Timings: median and interquartile range over repeats after warm-up, the noise stated with them.

CUDA work is synchronised before each clock read. On CPU the thread count is fixed by the caller
and recorded in the environment fingerprint. A comparison of two things is measured interleaved
(A, B, A, B, ...) in one process and given as a ratio, because these machines are noisy.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

from .records import Measurement


def quartiles(samples: list[float]) -> tuple[float, float, float]:
    if len(samples) < 2:
        value = samples[0] if samples else float("nan")
        return value, value, value
    q1, median, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return q1, median, q3


def summary_rows(metric: str, samples: list[float], unit: str = "s") -> list[Measurement]:
    q1, median, q3 = quartiles(samples)
    return [
        Measurement(metric, median, unit, note=f"median of {len(samples)}"),
        Measurement(f"{metric}_iqr", q3 - q1, unit),
        Measurement(f"{metric}_rel_iqr", (q3 - q1) / median if median else float("nan"), "ratio"),
    ]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_phases(phases: list[tuple[str, Callable[[], object]]], device: torch.device, warmup: int, repeats: int) -> dict[str, list[float]]:
    """Runs the phases in order, `warmup + repeats` times; returns each phase's seconds per repeat.

    A phase's callable gets nothing and may use what the previous phase stored (a closure).
    """
    samples = {name: [] for name, _ in phases}
    for i in range(warmup + repeats):
        for name, fn in phases:
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            if i >= warmup:
                samples[name].append(time.perf_counter() - start)
    return samples


def interleaved(fns: dict[str, Callable[[], object]], device: torch.device, warmup: int, rounds: int) -> dict[str, list[float]]:
    """Times each callable once per round, in turn (A, B, A, B, ...), so drifts in machine speed hit
    all alike: the phases of time_phases, with each callable a phase."""
    return time_phases(list(fns.items()), device, warmup=warmup, repeats=rounds)


def ratio_rows(samples: dict[str, list[float]], reference: str) -> list[Measurement]:
    """Each entry's time over the reference's: the ratio of medians, and the IQR of per-round ratios."""
    rows = []
    ref = samples[reference]
    for name, times in samples.items():
        per_round = [t / r for t, r in zip(times, ref)]
        q1, _, q3 = quartiles(per_round)
        rows.append(Measurement("time_ratio", statistics.median(times) / statistics.median(ref), "ratio", scope=name,
                                note=f"to {reference}; per-round IQR {q3 - q1:.3f}"))
    return rows
