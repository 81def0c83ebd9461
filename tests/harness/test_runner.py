"""The study runner end to end on the real MiniLM: ids, resume after a SIGKILL, failures recorded,
Ray against local, and tidy tables. Trials measure parameters only, to stay quick."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from harness import store as store_module
from harness.executors import LocalExecutor, RayExecutor
from harness.layers import layer_sizes
from harness.runner import interleave, run_study, select
from harness.spec import load_study
from harness.store import Store

REPO = Path(__file__).resolve().parents[2]

SMALL = """
name: {name}
description: a small study for the tests
models: [minilm]
measure: [params]
adapters:
  - method: more
    axes: {{nblocks: [2, 4], blk_r: [2]}}
  - method: lora
    axes: {{r: [2]}}
profiles:
  cpu: {{seq_len: 16, batch: 2, threads: 1{extra}}}
"""


def write_study(tmp_path, name="small", extra="", text=None) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text or SMALL.format(name=name, extra=extra))
    return path


def run_cli(*args, timeout=600, **kwargs):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout, **kwargs)


def test_study_runs_and_writes_tidy_results(tmp_path):
    study = load_study(str(write_study(tmp_path)))
    store = Store(study.name, tmp_path / "results")
    counts = run_study(study, study.trials, LocalExecutor(), store, log=lambda *_: None)
    assert counts == {"ok": 3, "failed": 0}
    frame = store_module.load(study.name, tmp_path / "results")
    trainable = frame[(frame.metric == "trainable_params") & (frame.scope == "")]
    # the runner's numbers are the closed forms the study planned with (classifier head included)
    adapters = {t.id: t.adapter.closed_form_params(layer_sizes("minilm")) for t in study.trials}
    head = 384 * 2 + 2
    assert {row.trial_id: row.value - head for row in trainable.itertuples()} == adapters
    trials = pd.read_csv(store.root / "trials.csv")
    assert set(trials.columns) >= {"trial_id", "status", "model", "adapter", "nblocks", "blk_r", "r", "seed", "git_commit"}
    assert (trials.status == "ok").all() and len(trials) == 3
    record = json.loads(next(store.records_dir.glob("*.json")).read_text())
    assert record["env"]["torch"] and "config" in record and record["info"]["model_info"]["weights"] == "pretrained"
    assert "record" not in record and record["config"]["kind"] == "measure"
    metrics = pd.read_csv(store.root / "metrics.csv")
    assert list(metrics.columns) == store_module.METRIC_COLUMNS


def test_a_raising_trial_and_an_out_of_memory_trial_are_recorded_while_others_finish(tmp_path):
    text = """
name: failing
models: [minilm]
measure: [params, memory]
adapters:
  - method: more
    axes: {nblocks: [4, 500], blk_r: [2]}
profiles:
  cpu:
    threads: 1
    memory_limit_gb: 4
    shapes: [{seq_len: 16, batch: 2}, {seq_len: 512, batch: 2048}]
"""
    study = load_study(str(write_study(tmp_path, "failing", text=text)))
    store = Store(study.name, tmp_path / "results")
    counts = run_study(study, study.trials, LocalExecutor(jobs=2), store, log=lambda *_: None)
    records = {(r["config"]["adapter_params"]["nblocks"], r["config"]["batch"]): r for r in store.records().values()}
    assert records[(4, 2)]["status"] == "ok"
    assert counts == {"ok": 1, "failed": 3}
    assert {r["jobs"] for r in records.values()} == {2}  # the executor's trials at a time, in every record
    too_many_blocks = records[(500, 2)]
    assert too_many_blocks["error_type"] == "ValueError" and "nblocks=500 is larger than its 384" in too_many_blocks["error"]
    assert "Traceback" in too_many_blocks["traceback_tail"] or "ValueError" in too_many_blocks["traceback_tail"]
    assert records[(4, 2048)]["error_type"] == "OutOfMemory"


def test_a_peft_method_that_cannot_be_built_on_the_model_is_a_failed_trial_with_peft_reason(tmp_path):
    text = SMALL.format(name="unbuildable", extra="").replace(
        "  - method: more\n    axes: {nblocks: [2, 4], blk_r: [2]}\n", "  - method: c3a\n    axes: {block_size: [100]}\n")
    study = load_study(str(write_study(tmp_path, "unbuildable", text=text)))
    store = Store(study.name, tmp_path / "results")
    counts = run_study(study, study.trials, LocalExecutor(), store, log=lambda *_: None)
    assert counts == {"ok": 1, "failed": 1}  # LoRA still ran
    records = {r["config"]["adapter"]: r for r in store.records().values()}
    assert records["lora"]["status"] == "ok"
    c3a = records["c3a"]
    assert c3a["status"] == "failed" and c3a["error_type"] == "ValueError"
    assert "block size should be a factor of the input size" in c3a["error"]


def test_timeout_is_recorded(tmp_path):
    study = load_study(str(write_study(tmp_path, "slow", extra=", timeout_s: 1")))
    store = Store(study.name, tmp_path / "results")
    run_study(study, study.trials[:1], LocalExecutor(), store, log=lambda *_: None)
    (record,) = store.records().values()
    assert record["status"] == "failed" and record["error_type"] == "Timeout"


def test_sigkill_of_the_driver_then_rerun_gives_complete_results(tmp_path):
    path = write_study(tmp_path, "killed")
    results = tmp_path / "results"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    driver = subprocess.Popen([sys.executable, "-m", "harness", "run", str(path), "--results-dir", str(results)],
                              cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    records = results / "killed" / "records"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(records.glob("*.json"))) < 1:
        time.sleep(0.2)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and its trial worker, mid-study
    driver.wait()
    finished_before = len(list(records.glob("*.json")))
    assert 1 <= finished_before < 3
    for csv in ("trials.csv", "metrics.csv"):  # readable, never half-written
        pd.read_csv(results / "killed" / csv)
    rerun = run_cli("run", str(path), "--results-dir", str(results))
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"{finished_before} already done" in rerun.stdout
    trials = pd.read_csv(results / "killed" / "trials.csv")
    assert len(trials) == 3 and trials.trial_id.is_unique and (trials.status == "ok").all()
    metrics = pd.read_csv(results / "killed" / "metrics.csv")
    assert not metrics.duplicated(["trial_id", "metric", "scope", "step"]).any()
    assert set(metrics.trial_id) == set(trials.trial_id)


def test_fresh_moves_old_results_aside_and_resume_skips_finished(tmp_path):
    path = write_study(tmp_path, "again")
    results = tmp_path / "results"
    first = run_cli("run", str(path), "--results-dir", str(results), "--only", "adapter=lora")
    assert first.returncode == 0, first.stderr[-2000:]
    second = run_cli("run", str(path), "--results-dir", str(results))
    assert "1 already done" in second.stdout and "2 to run" in second.stdout
    fresh = run_cli("run", str(path), "--results-dir", str(results), "--fresh", "--only", "adapter=lora")
    assert fresh.returncode == 0
    old = [p for p in results.iterdir() if p.name.startswith("again.old-")]
    assert len(old) == 1 and len(list((old[0] / "records").glob("*.json"))) == 3


def test_ray_executor_gives_the_local_results(tmp_path):
    ray = pytest.importorskip("ray")
    study = load_study(str(write_study(tmp_path, "viaray")))
    local, remote = Store("local", tmp_path / "a"), Store("remote", tmp_path / "b")
    run_study(study, study.trials, LocalExecutor(), local, log=lambda *_: None)
    run_study(study, study.trials, RayExecutor(num_cpus=2), remote, log=lambda *_: None)
    assert not ray.is_initialized()  # the local instance started for the run is shut down after it
    columns = ["trial_id", "metric", "value", "unit", "scope"]
    a = pd.read_csv(local.root / "metrics.csv")[columns].sort_values(columns).reset_index(drop=True)
    b = pd.read_csv(remote.root / "metrics.csv")[columns].sort_values(columns).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    assert (pd.read_csv(remote.root / "trials.csv").status == "ok").all()


def test_only_selects_by_config_or_adapter_parameter(tmp_path):
    study = load_study(str(write_study(tmp_path)))
    assert len(select(study.trials, ["adapter=more"])) == 2
    assert len(select(study.trials, ["adapter=more", "nblocks=4"])) == 1
    with pytest.raises(ValueError, match="key=value"):
        select(study.trials, ["nblocks"])


def test_a_bad_study_file_runs_nothing(tmp_path):
    path = write_study(tmp_path, "bad", text="name: bad\nmodels: [minilm]\nadapters:\n  - method: lora\n    axes: {rank: [4]}\n")
    result = run_cli("run", str(path), "--results-dir", str(tmp_path / "results"))
    assert result.returncode == 2
    assert f"error: {path}: adapters[0].axes: Adapter 'lora' has no parameter 'rank'" in result.stderr
    assert not (tmp_path / "results").exists()


def test_compare_sets_adapters_side_by_side_with_ratios(tmp_path):
    result = run_cli("compare", "--model", "minilm", "--adapters", "lora:r=8", "more:nblocks=4,blk_r=4",
                     "--seq-len", "16", "--batch", "2", "--repeats", "2", "--threads", "1",
                     "--results-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    table = result.stdout.split("ratios to lora(lora_alpha=16,r=8):")[1]
    # equal parameters per matrix: LoRA r=8 has 2x the trainable parameters of MoRe 4 blocks of rank 4
    params_line = next(line for line in table.splitlines() if line.startswith("trainable_params"))
    assert "(0.50x)" in params_line
    assert any(line.startswith("step time, interleaved (ratio)") for line in table.splitlines())
    (folder,) = [p for p in tmp_path.iterdir() if p.name.startswith("compare-")]
    trials = pd.read_csv(folder / "trials.csv")
    assert len(trials) == 3 and (trials.status == "ok").all()


def test_interleave_lets_families_and_their_arms_take_turns(tmp_path):
    path = tmp_path / "order.yaml"
    path.write_text("""
name: order
models: [minilm]
tasks: [commonsenseqa]
adapters:
  - {method: more, axes: {nblocks: [4], blk_r: [1, 4]}, lr: [1.0e-3, 1.0e-2]}
  - {method: lora, axes: {r: [1, 4]}, lr: [1.0e-3, 1.0e-2]}
""")
    study = load_study(str(path))
    order = [t.arm for t in interleave(study.trials)]
    assert sorted(order) == sorted(t.arm for t in study.trials)
    assert order[:4] == ["more(blk_r=1,nblocks=4)", "lora(lora_alpha=2,r=1)", "head only", "calibrated"]
    assert order[4:6] == ["more(blk_r=4,nblocks=4)", "lora(lora_alpha=8,r=4)"]
    assert all(a != b for a, b in zip(order, order[1:]))  # no arm twice in a row


def test_a_tuned_study_searches_rates_on_validation_then_runs_the_seeds_at_the_chosen_rate(tmp_path):
    """Real training at a tiny budget: the learning-rate search at the first seed, the choice read back from the
    store, then the other seed at that rate only; a rerun finds everything done."""
    path = tmp_path / "tuned.yaml"
    path.write_text("""
name: tuned
models: [minilm]
tasks: [commonsenseqa]
target_modules: [query]
measure: [params]
adapters:
  - {method: lora, axes: {r: [1]}, lr: [1.0e-4, 1.0e-1]}
profiles:
  cpu: {steps: 2, batch: 2, seq_len: 16, threads: 1, train_examples: 8, validation_examples: 8, test_examples: 4,
        seeds: [0, 1], jobs: 2}
""")
    results = tmp_path / "results"
    run = run_cli("run", str(path), "--results-dir", str(results), "--profile", "cpu")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "learning rates chosen on validation: lora(lora_alpha=2,r=1) " in run.stdout  # the tuned arm alone
    trials = pd.read_csv(results / "tuned" / "trials.csv")
    lora = trials[trials.adapter == "lora"]
    line = next(line for line in run.stdout.splitlines() if line.startswith("learning rates chosen on validation"))
    chosen = float(line.split("lora(lora_alpha=2,r=1) ")[1].split(";")[0])
    assert sorted(lora[lora.seed == 0].lr) == [1e-4, 1e-1]
    assert list(lora[lora.seed == 1].lr) == [pytest.approx(chosen)]
    assert len(trials) == 2 + 1 + 4 and (trials.status == "ok").all()  # the references ran at both seeds
    again = run_cli("run", str(path), "--results-dir", str(results), "--profile", "cpu")
    assert again.stdout.count("already done") == 2 and "0 to run" in again.stdout
