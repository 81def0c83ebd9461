"""Runs one trial in its own process: `python -m harness.worker CONFIG.json RESULT.json`.

Its memory peak is its own, and a crash, an out-of-memory kill or a timeout ends this process,
not the study. The result file is written atomically; the driver reads it (or its absence).
"""
from __future__ import annotations

import dataclasses
import json
import resource
import sys
import time
import traceback
from pathlib import Path

from .run_trial import run_trial
from .store import write_atomically
from .trial import TrialConfig, TrialResult

OOM_MARKERS = ("out of memory", "can't allocate memory", "cannot allocate memory")


def classify(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".lower()
    if isinstance(error, MemoryError) or any(marker in text for marker in OOM_MARKERS):
        return "OutOfMemory"
    return type(error).__name__


def limit_memory(gigabytes: float | None) -> None:
    """An address-space cap, so an over-large trial fails inside Python instead of starving the machine."""
    if gigabytes:
        limit = int(gigabytes * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def main(config_path: str, result_path: str) -> int:
    config = TrialConfig.from_json(json.loads(Path(config_path).read_text()))
    started = time.time()
    limit_memory(config.memory_limit_gb)
    try:
        result = run_trial(config)
    except BaseException as error:  # noqa: BLE001 - every failure is recorded, the study goes on
        tail = traceback.format_exc().strip().splitlines()[-12:]
        result = TrialResult.failure(classify(error), str(error)[:2000], "\n".join(tail))
    result = dataclasses.replace(result, duration_s=time.time() - started)
    write_atomically(Path(result_path), json.dumps(result.to_json(), default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:3]))
