"""Tidy results of a study, under results/<study>/:

- records/<trial_id>.json: one JSON record per trial, the source of truth: its id, study, config
  (`TrialConfig.to_json`), finish time and result (`TrialResult.to_json`: status, error, environment
  fingerprint, device, what the trial said about its model, every measurement);
- trials.csv: one row per trial, config columns plus status and `jobs` (trials run at a time; empty: unknown);
- metrics.csv: one row per measurement: trial_id, metric, value, unit, step (empty for a final
  value), scope (a module name, empty for the whole model), note.

Only the driver writes. Every file is written to a temporary name and renamed into place, so a
kill at any moment leaves readable files; the two CSVs are rebuilt from the records, so they can
hold neither a duplicated nor a lost row.
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:  # reading results needs neither torch nor PEFT, which the trial contract imports
    from .trial import TrialConfig, TrialResult

RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"  # where a study run on this machine writes
# The results that ship: the reference machine's runs (the machine is named in results/reference/README.md)
REFERENCE_DIR = RESULTS_DIR / "reference"
THIS_MACHINE, REFERENCE_MACHINE = "this machine", "reference machine (2-core CPU)"  # whose results, in figures
METRIC_COLUMNS = ["trial_id", "metric", "value", "unit", "step", "scope", "note"]
# The two reference arms of a training study (TrialConfig.arm), named here so that reading results needs no torch
HEAD_ONLY, CALIBRATED = "head only", "calibrated"
IN_TURN = "in turn"  # the arm of an interleaved trial: several adapters timed in turn, none trained
EXAMPLE_COLUMNS = ["split", "example_id", "label", "prediction", "correct", "loss"]
LEADING_TRIAL_COLUMNS = ["trial_id", "study", "status", "model", "task", "arm", "adapter", "label"]


def write_atomically(path: Path, text: str, compress: bool = False) -> None:
    """Writes to a temporary name, then renames: a reader sees the old file or the new one, never half of one.
    `compress`: gzip with no timestamp, so the same text gives the same bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = gzip.compress(text.encode(), mtime=0) if compress else text.encode()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def record_of(study: str, config: TrialConfig, result: TrialResult, jobs: int | None = 1) -> dict:
    """What the store keeps of one trial. `jobs`: how many trials the executor ran at a time (they shared the
    machine, which a time per step shows); None where the executor does not say (a Ray cluster schedules)."""
    return {"trial_id": config.id, "study": study, "arm": config.arm, "config": config.to_json(),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "jobs": jobs, **result.to_json()}


class Store:
    def __init__(self, study: str, results_dir: Path | str | None = None):
        self.study = study
        self.root = Path(results_dir or RESULTS_DIR) / study
        self.records_dir = self.root / "records"
        self.examples_dir = self.root / "examples"

    # -- reading --
    def records(self) -> dict[str, dict]:
        out = {}
        if self.records_dir.exists():
            for path in sorted(self.records_dir.glob("*.json")):
                try:
                    record = json.loads(path.read_text())
                except json.JSONDecodeError:
                    continue  # cannot happen with atomic writes; skip rather than crash a resume
                out[record["trial_id"]] = record
        return out

    def trials(self) -> pd.DataFrame:
        """trials.csv: one row per trial, finished or failed."""
        if not (self.root / "trials.csv").exists():
            raise FileNotFoundError(f"No results for study {self.study!r} under {self.root}. Run `python -m harness run "
                                    f"{self.study}` first.")
        return pd.read_csv(self.root / "trials.csv")

    def status(self) -> dict[str, str]:
        return {trial_id: r["status"] for trial_id, r in self.records().items()}

    def examples(self, trial_id: str) -> pd.DataFrame:
        """One trial's per-example outputs: split, example_id, label, prediction, correct, loss."""
        path = self.examples_dir / f"{trial_id}.csv.gz"
        if not path.exists():
            raise FileNotFoundError(f"No per-example outputs for trial {trial_id} under {self.examples_dir}: only "
                                    "training trials write them.")
        return pd.read_csv(path, dtype={"example_id": str})

    # -- writing (driver only) --
    def write(self, record: dict) -> None:
        """Keeps a trial's record; its per-example outputs, if any, go to examples/<trial_id>.csv.gz."""
        examples = record.pop("examples", None)
        if examples:
            frame = pd.DataFrame(examples, columns=EXAMPLE_COLUMNS)
            write_atomically(self.examples_dir / f"{record['trial_id']}.csv.gz", frame.to_csv(index=False),
                             compress=True)
        # the tables first, then the record: a kill between the two leaves tables that hold one trial more than
        # the records, which a rerun runs again and rebuilds, never records without tables
        self.rebuild_tables({**self.records(), record["trial_id"]: record})
        write_atomically(self.records_dir / f"{record['trial_id']}.json", json.dumps(record, indent=1, default=str))

    def rebuild_tables(self, records: dict[str, dict] | None = None) -> None:
        records = [r for _, r in sorted((self.records() if records is None else records).items())]
        write_atomically(self.root / "trials.csv", trials_frame(records).to_csv(index=False))
        write_atomically(self.root / "metrics.csv", metrics_frame(records).to_csv(index=False))

    def move_aside(self) -> Path | None:
        """--fresh: the old results move to <study>.old-<time>; nothing is deleted."""
        if not self.root.exists():
            return None
        target = self.root.with_name(f"{self.root.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
        shutil.move(str(self.root), str(target))
        return target


def trial_row(record: dict) -> dict:
    config = dict(record["config"])
    params = config.pop("adapter_params", None) or {}
    row = {"trial_id": record["trial_id"], "study": record["study"], "status": record["status"],
           "arm": record.get("arm")}
    for key, value in config.items():
        row[key] = json.dumps(value) if isinstance(value, (list, dict)) else value
    row.update(params)  # nblocks, blk_r, r, lora_alpha, ... as their own columns
    row.update({
        "error_type": record.get("error_type"), "error": record.get("error"),
        "device": record.get("device"), "git_commit": (record.get("env") or {}).get("git_commit"),
        "duration_s": record.get("duration_s"), "jobs": record.get("jobs"),  # None: an older record, unknown
    })
    return row


def trials_frame(records: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame([trial_row(r) for r in records])
    if frame.empty:
        return pd.DataFrame(columns=LEADING_TRIAL_COLUMNS)
    leading = [c for c in LEADING_TRIAL_COLUMNS if c in frame]
    return frame[leading + [c for c in frame.columns if c not in leading]]


def metrics_frame(records: list[dict]) -> pd.DataFrame:
    rows = [{"trial_id": r["trial_id"], **m} for r in records for m in r.get("rows", [])]
    frame = pd.DataFrame(rows, columns=METRIC_COLUMNS)
    frame["step"] = frame["step"].astype("Int64")
    return frame


def final_values(frame: pd.DataFrame) -> pd.DataFrame:
    """Each trial's final whole-model measurements: the rows with no step and no module scope."""
    return frame[(frame["scope"].fillna("") == "") & frame["step"].isna()]


def machine_of(results_dir: Path | str | None = None) -> str:
    """Whose results a results folder holds: the reference machine's (results/reference/) or this machine's."""
    is_reference = Path(results_dir or RESULTS_DIR).resolve() == REFERENCE_DIR.resolve()
    return REFERENCE_MACHINE if is_reference else THIS_MACHINE


def reference_beside(results_dir: Path | str | None = None) -> Path | None:
    """The reference machine's results to show beside those under `results_dir`; None when they are its own."""
    return None if machine_of(results_dir) == REFERENCE_MACHINE else REFERENCE_DIR


def load(study: str, results_dir: Path | str | None = None) -> pd.DataFrame:
    """The study's measurements joined with its trials' config columns: one row per measurement."""
    store = Store(study, results_dir)
    trials = store.trials()
    metrics = pd.read_csv(store.root / "metrics.csv", dtype={"scope": str, "note": str})
    metrics["scope"] = metrics["scope"].fillna("")
    metrics["note"] = metrics["note"].fillna("")
    return metrics.merge(trials, on="trial_id", how="left")
