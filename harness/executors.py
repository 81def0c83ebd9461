"""Where trials run. `local`: one fresh subprocess per trial, `--jobs N` at a time. `ray`: each trial
is a Ray task (asking for a GPU on GPU profiles) that runs the same subprocess. Either way the
result comes back to the driver, which alone writes results."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Callable, Iterable

from .trial import TrialConfig, TrialResult

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_in_subprocess(config: TrialConfig, python: str = sys.executable) -> TrialResult:
    """Runs one trial in a fresh process and returns its result; never raises for a trial's failure."""
    timeout = config.timeout_s
    with tempfile.TemporaryDirectory(prefix="trial-") as folder:
        config_path, result_path = Path(folder, "config.json"), Path(folder, "result.json")
        config_path.write_text(json.dumps(config.to_json()))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
        try:
            proc = subprocess.run([python, "-m", "harness.worker", str(config_path), str(result_path)],
                                  capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO_ROOT)
        except subprocess.TimeoutExpired:
            return TrialResult.failure("Timeout", f"the trial ran past its {timeout} s limit (timeout_s) and was stopped")
        if result_path.exists():
            return TrialResult.from_json(json.loads(result_path.read_text()))
        stderr_tail = "\n".join(proc.stderr.strip().splitlines()[-12:])
        if proc.returncode < 0:
            name = signal.Signals(-proc.returncode).name
            likely = " (the kernel's out-of-memory killer sends SIGKILL)" if name == "SIGKILL" else ""
            return TrialResult.failure("Killed", f"the trial process was killed by {name}{likely}", stderr_tail)
        return TrialResult.failure("WorkerCrashed", f"the trial process exited with code {proc.returncode} and no result", stderr_tail)


Callback = Callable[[TrialConfig, TrialResult], None]


class LocalExecutor:
    name = "local"

    def __init__(self, jobs: int = 1):
        self.jobs = max(1, jobs)

    def run(self, trials: Iterable[TrialConfig], on_result: Callback) -> None:
        trials = list(trials)
        if self.jobs == 1:
            for trial in trials:
                on_result(trial, run_in_subprocess(trial))
            return
        with ThreadPoolExecutor(self.jobs) as pool:
            futures = {pool.submit(run_in_subprocess, t): t for t in trials}
            for future in as_completed(futures):  # results reach the driver thread as they finish
                on_result(futures[future], future.result())


class RayExecutor:
    """Connects to a cluster (`address="auto"` or `ray://host:port`) or starts a local Ray instance."""

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None):
        self.address, self.num_cpus = address, num_cpus

    def run(self, trials: Iterable[TrialConfig], on_result: Callback) -> None:
        import ray

        started_here = not ray.is_initialized()
        if started_here:
            kwargs = {"address": self.address} if self.address else {"num_cpus": self.num_cpus, "include_dashboard": False}
            ray.init(**kwargs, log_to_driver=False,
                     runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT)}} if not self.address else None)
        remote_trial = ray.remote(run_in_subprocess)
        pending = {}
        for trial in trials:
            wants_gpu = trial.device.startswith("cuda")
            ref = remote_trial.options(num_gpus=1 if wants_gpu else 0, num_cpus=trial.threads or 1).remote(trial)
            pending[ref] = trial
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                trial = pending.pop(done[0])
                try:
                    result = ray.get(done[0])
                except Exception as error:  # noqa: BLE001 - a lost node or worker is a failed trial
                    result = TrialResult.failure(type(error).__name__, str(error)[:2000])
                on_result(trial, result)
        finally:
            if started_here and not self.address:
                ray.shutdown()


def make_executor(name: str, jobs: int = 1, address: str | None = None):
    if name == "local":
        return LocalExecutor(jobs)
    if name == "ray":
        return RayExecutor(address, num_cpus=jobs if jobs > 1 else None)
    raise ValueError(f"Unknown executor {name!r}; choose local or ray.")
