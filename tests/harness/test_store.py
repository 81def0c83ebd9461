"""The results store: atomic writes, tables rebuilt from the records, resume status, the final
whole-model values, and the joined frame `load` returns."""
import json
import os

import pandas as pd
import pytest

from harness import store as store_module
from harness.adapters import AdapterSpec
from harness.store import Store, final_values, load, record_of, write_atomically
from harness.trial import TrialConfig, TrialResult


def rows(params: float, loss: float) -> list[dict]:
    return [{"metric": "trainable_params", "value": params, "unit": "params", "step": None, "scope": "", "note": ""},
            {"metric": "trainable_params", "value": params / 2, "unit": "params", "step": None, "scope": "layer.0",
             "note": ""},
            {"metric": "val_loss", "value": loss + 1, "unit": "nats", "step": 0, "scope": "", "note": ""},
            {"metric": "val_loss", "value": loss, "unit": "nats", "step": 10, "scope": "", "note": ""},
            {"metric": "val_loss", "value": loss, "unit": "nats", "step": None, "scope": "", "note": ""}]


def configs() -> list[TrialConfig]:
    common = {"kind": "train", "model": "minilm", "task": "boolq", "steps": 10}
    return [TrialConfig(adapter=AdapterSpec.make("more", {"nblocks": 4, "blk_r": 2}), **common),
            TrialConfig(adapter=AdapterSpec.make("lora", {"r": 2}), **common),
            TrialConfig(adapter=None, label="head only", **common)]


@pytest.fixture
def store(tmp_path):
    store = Store("study", tmp_path)
    more, lora, control = configs()
    store.write(record_of("study", more, TrialResult("ok", rows(1536, 0.5), env={"git_commit": "abc"}, device="cpu")))
    store.write(record_of("study", lora, TrialResult("ok", rows(1536, 0.6), device="cpu")))
    store.write(record_of("study", control, TrialResult.failure("Timeout", "ran past its 1 s limit")))
    return store


def test_write_atomically_replaces_whole_files_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "deep" / "file.txt"
    write_atomically(path, "first")
    write_atomically(path, "second")
    assert path.read_text() == "second"

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        write_atomically(path, "third")
    assert path.read_text() == "second"  # the old file is whole
    assert [p.name for p in path.parent.iterdir()] == ["file.txt"]  # and no temporary is left


def test_records_tables_and_resume_status(store):
    more, lora, control = configs()
    assert store.status() == {more.id: "ok", lora.id: "ok", control.id: "failed"}
    record = json.loads((store.records_dir / f"{more.id}.json").read_text())
    assert record["config"] == more.to_json() and record["trial_id"] == more.id and "record" not in record
    assert TrialResult.from_json(record).rows == rows(1536, 0.5)
    trials = pd.read_csv(store.root / "trials.csv")
    assert list(trials.columns[:8]) == store_module.LEADING_TRIAL_COLUMNS
    by_id = trials.set_index("trial_id")
    assert by_id.loc[more.id, "adapter"] == "more" and by_id.loc[more.id, "nblocks"] == 4  # parameters as columns
    assert by_id.loc[lora.id, "r"] == 2 and by_id.loc[lora.id, "lora_alpha"] == 4
    assert by_id.loc[control.id, "adapter"] == "none" and by_id.loc[control.id, "label"] == "head only"
    assert by_id.loc[control.id, "error_type"] == "Timeout" and by_id.loc[more.id, "git_commit"] == "abc"
    assert by_id["jobs"].tolist() == [1, 1, 1]  # one trial at a time: record_of's default
    metrics = pd.read_csv(store.root / "metrics.csv")
    assert list(metrics.columns) == store_module.METRIC_COLUMNS and len(metrics) == 10


def test_how_many_trials_ran_at_a_time_is_kept_and_unknown_in_older_records(store):
    more, lora, _ = configs()
    store.write(record_of("study", more, TrialResult("ok", rows(1536, 0.5)), jobs=2))
    older = {key: value for key, value in record_of("study", lora, TrialResult("ok", rows(1536, 0.6))).items()
             if key != "jobs"}
    store.write(older)
    jobs = pd.read_csv(store.root / "trials.csv").set_index("trial_id")["jobs"]
    assert jobs[more.id] == 2 and pd.isna(jobs[lora.id])


def test_tables_are_rebuilt_from_the_records(store):
    before = {name: (store.root / name).read_text() for name in ("trials.csv", "metrics.csv")}
    for name in before:
        (store.root / name).write_text("half-written,")
    (store.records_dir / ".tmp-partial.json").write_text("{")  # a stray file is not a record
    store.rebuild_tables()
    assert {name: (store.root / name).read_text() for name in before} == before


def test_final_values_and_load(store, tmp_path):
    frame = load("study", tmp_path)
    assert len(frame) == 10 and {"model", "adapter", "status", "nblocks"} <= set(frame.columns)
    final = final_values(frame)
    assert sorted(final.metric) == ["trainable_params", "trainable_params", "val_loss", "val_loss"]
    more, lora, _ = configs()
    assert final.set_index(["trial_id", "metric"]).loc[(lora.id, "val_loss"), "value"] == 0.6
    with pytest.raises(FileNotFoundError, match="Run `python -m harness run nothing` first"):
        load("nothing", tmp_path)


def test_fresh_moves_results_aside(store):
    moved = store.move_aside()
    assert not store.root.exists() and moved.name.startswith("study.old-")
    assert len(list((moved / "records").glob("*.json"))) == 3
    assert store.move_aside() is None
