"""`make gpu-check GPU_CHECK_FLAGS=--dry-run`: the whole GPU plan at tiny sizes on the CPU, Triton's kernels
through its interpreter, in a subprocess as `make gpu-check` runs it (PYTHONPATH=., the interpreter as given)."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu")
    env = {**os.environ, "PYTHONPATH": "."}
    env.pop("TRITON_INTERPRET", None)  # the script sets it for its stages
    result = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return out, result.stdout


def test_dry_run_writes_at_most_eight_files(dry_run):
    out, stdout = dry_run
    names = {p.name for p in out.iterdir()}
    assert len(names) <= 8 and {"run.csv", "smoke.csv", "kernels.csv", "training.csv", "summary.md"} <= names
    assert "gpu_check: found" in stdout and "torch" in stdout.splitlines()[0]
    stages = {r["name"]: r["value"] for r in rows(out / "run.csv") if r["kind"] == "stage"}
    assert stages == {"smoke": "ok", "kernels": "ok", "training": "ok"}


def test_every_smoke_check_passes_and_covers_each_kernel_and_tiling(dry_run):
    out, _ = dry_run
    smoke = rows(out / "smoke.csv")
    assert smoke and all(r["passed"] == "True" for r in smoke), [r for r in smoke if r["passed"] != "True"]
    assert {r["kernel"] for r in smoke} == {"forward", "backward_dx_dw1_dw2", "backward_dw1_dw2"}
    assert {r["dtype"] for r in smoke} == {"bfloat16", "float32"}
    from more.kernels.triton_monarch import TUNING_CANDIDATES

    tilings = {r["tiles"] for r in smoke}  # every candidate, at the expanded and at the per-block second factor
    assert len(tilings) == 2 * len(TUNING_CANDIDATES) and {"expanded=True" in t for t in tilings} == {True, False}  # both second factors
    assert all(0 <= float(r["error"]) <= float(r["tolerance"]) for r in smoke)


def test_kernel_and_training_rows_are_measured(dry_run):
    out, _ = dry_run
    kernels = rows(out / "kernels.csv")
    measured = {(r["path"], r["pass"]) for r in kernels if r["median_ms"] and not r["message"]}
    for path in ("more-triton", "more-bmm", "more-reference", "lora-equal-params", "lora-equal-rank"):
        assert {(path, "forward"), (path, "forward_backward")} <= measured, path
    training = rows(out / "training.csv")
    smoke = rows(out / "smoke.csv")
    assert {(r["model"], r["path"]) for r in training if r["median_ms"]} == {
        (model, path) for model in ("llama-7b@paper", "smollm2-135m")
        for path in ("more-auto", "more-bmm", "more-triton", "lora-r32")}
    summary = (out / "summary.md").read_text()
    assert "## Smoke" in summary and f"{len(smoke)} of {len(smoke)} checks passed" in summary
    assert "triton/bmm" in summary


def test_a_stage_that_cannot_run_is_skipped_with_its_reason(tmp_path):
    """Without --dry-run on a machine with no CUDA device, nothing runs and the summary says why."""
    env = {**os.environ, "PYTHONPATH": ".", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    stages = [r for r in rows(tmp_path / "run.csv") if r["kind"] == "stage"]
    assert [(r["name"], r["value"], r["detail"]) for r in stages] == [
        (name, "skipped", "no CUDA device") for name in ("smoke", "kernels", "training")]
    assert "no CUDA device" in (tmp_path / "summary.md").read_text()
