"""Runs a study: skips finished trials, runs the rest through an executor, writes each result as it
comes, and shows progress. An interrupted study loses nothing that was finished; a rerun resumes."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

from tqdm import tqdm

from .spec import Study, Trial
from .store import Store

HEADLINE = (("trainable_params", "{:,.0f} params"), ("eval_accuracy", "acc {:.3f}"), ("eval_mcc", "mcc {:.3f}"),
            ("eval_loss", "eval loss {:.4f}"), ("eval_loss_drop_in_se", "loss drop {:.1f} SE"),
            ("learning_signal", "signal {:.0f}"), ("flops_forward", "{:.3g} FLOP fwd"), ("time_step_s", "{:.3f} s/step"),
            ("peak_rss_bytes", "{:.0f} MiB RSS"))


def select(trials: list[Trial], only: list[str] | None) -> list[Trial]:
    """--only key=value (repeatable): keeps trials whose config or adapter parameter has that value."""
    selected = trials
    for item in only or []:
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"--only takes key=value, got {item!r}")
        selected = [t for t in selected if _matches(t.config, key, value)]
    return selected


def _matches(config: dict, key: str, value: str) -> bool:
    actual = config.get(key, (config.get("adapter_params") or {}).get(key))
    return str(actual) == value or (isinstance(actual, float) and _same_float(actual, value))


def _same_float(actual: float, text: str) -> bool:
    try:
        return math.isclose(actual, float(text))
    except ValueError:
        return False


@dataclass
class Plan:
    todo: list[Trial]
    done: list[Trial]
    failed_kept: list[Trial]


def plan(trials: list[Trial], store: Store, retry_failed: bool) -> Plan:
    status = store.status()
    done = [t for t in trials if status.get(t.id) == "ok"]
    failed = [t for t in trials if status.get(t.id) == "failed"]
    todo = [t for t in trials if t.id not in status or (retry_failed and status[t.id] == "failed")]
    return Plan(todo, done, [] if retry_failed else failed)


def headline(rows: list[dict]) -> str:
    values = {r["metric"]: r["value"] for r in rows if not r.get("scope") and r.get("step") is None}
    parts = []
    for metric, fmt in HEADLINE:
        value = values.get(metric)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            parts.append(fmt.format(value / 2**20 if metric == "peak_rss_bytes" else value))
    return ", ".join(parts)


def describe(trial: Trial) -> str:
    c = trial.config
    if c.get("kind") == "interleaved":
        return f"{c['model']} interleaved step timing of {', '.join(c['adapters'])}"
    adapter = c.get("adapter") or "none"
    params = ",".join(f"{k}={v}" for k, v in (c.get("adapter_params") or {}).items())
    return f"{c['model']} {c.get('task') or ''} {adapter}({params}) lr={c.get('lr')} seed={c.get('seed')}".replace("  ", " ")


def run_study(study: Study, trials: list[Trial], executor, store: Store, retry_failed: bool = False, log=print) -> dict:
    work = plan(trials, store, retry_failed)
    log(f"study {study.name}: {len(trials)} trials; {len(work.done)} already done, {len(work.failed_kept)} failed "
        f"before (rerun with --retry-failed), {len(work.todo)} to run on {executor.name}")
    counts = {"ok": 0, "failed": 0}
    bar = tqdm(total=len(work.todo), unit="trial", dynamic_ncols=True, disable=not work.todo)

    def on_result(trial: Trial, result: dict) -> None:
        details = result.get("record") or {}
        record = {
            "trial_id": trial.id, "study": study.name, "config": trial.config,
            "status": result.get("status", "failed"), "error_type": result.get("error_type"),
            "error": result.get("error"), "traceback_tail": result.get("traceback_tail"),
            "duration_s": result.get("duration_s"), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "rows": result.get("rows", []), "env": details.get("env"),
            "device": details.get("device", trial.config.get("device", "cpu")),
        }
        if details:
            record["record"] = details
        store.write(record)
        counts[record["status"]] += 1
        bar.update(1)
        bar.set_postfix(ok=counts["ok"], failed=counts["failed"], remaining=len(work.todo) - sum(counts.values()))
        outcome = headline(record["rows"]) if record["status"] == "ok" else f"FAILED {record['error_type']}: {record['error']}"
        tqdm.write(f"[{record['status']}] {trial.id} {describe(trial)}: {outcome}")

    try:
        executor.run(work.todo, on_result)
    finally:
        bar.close()
    log(f"study {study.name}: {counts['ok']} ok, {counts['failed']} failed this run; results in {store.root}")
    return counts
