"""Runs one trial in its own process: `python -m harness.worker CONFIG.json RESULT.json`.

Its memory peak is its own, and a crash, an out-of-memory kill or a timeout ends this process,
not the study. The result file is written atomically; the driver reads it (or its absence).
"""
from __future__ import annotations

import json
import resource
import sys
import time
import traceback
from pathlib import Path

from .store import write_atomically

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
    config = json.loads(Path(config_path).read_text())
    started = time.time()
    limit_memory(config.get("memory_limit_gb"))
    try:
        from .run_trial import run_trial

        result = {"status": "ok", **run_trial(config)}
    except BaseException as error:  # noqa: BLE001 - every failure is recorded, the study goes on
        tail = traceback.format_exc().strip().splitlines()[-12:]
        result = {"status": "failed", "error_type": classify(error), "error": str(error)[:2000],
                  "traceback_tail": "\n".join(tail), "rows": []}
    result["duration_s"] = time.time() - started
    write_atomically(Path(result_path), json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:3]))
