"""Runs a study: skips finished trials, runs the rest through an executor, writes each result as it
comes, and shows progress. An interrupted study loses nothing that was finished; a rerun resumes."""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from tqdm import tqdm

from .measure.records import Measurement, final_values
from .spec import Study
from .store import Store, record_of
from .trial import TrialConfig, TrialResult

HEADLINE = (("trainable_params", "{:,.0f} params"), ("val_accuracy", "val acc {:.3f}"), ("test_accuracy", "test acc {:.3f}"),
            ("test_matthews", "test mcc {:.3f}"), ("val_loss", "val loss {:.4f}"), ("test_loss", "test loss {:.4f}"),
            ("chosen_step", "step {:.0f} chosen"),
            ("flops_forward", "{:.3g} FLOP fwd"), ("time_step_s", "{:.3f} s/step"), ("peak_rss_bytes", "{:.0f} MiB RSS"))


def select(trials: list[TrialConfig], only: list[str] | None) -> list[TrialConfig]:
    """--only key=value (repeatable): keeps trials whose config or adapter parameter has that value."""
    selected = trials
    for item in only or []:
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"--only takes key=value, got {item!r}")
        selected = [t for t in selected if _matches(t.to_json(), key, value)]
    return selected


def _matches(config: dict, key: str, value: str) -> bool:
    actual = config.get(key, config["adapter_params"].get(key))
    return str(actual) == value or (isinstance(actual, float) and _same_float(actual, value))


def _same_float(actual: float, text: str) -> bool:
    try:
        return math.isclose(actual, float(text))
    except ValueError:
        return False


@dataclass
class Plan:
    todo: list[TrialConfig]
    done: list[TrialConfig]
    failed_kept: list[TrialConfig]


def plan(trials: list[TrialConfig], store: Store, retry_failed: bool) -> Plan:
    status = store.status()
    done = [t for t in trials if status.get(t.id) == "ok"]
    failed = [t for t in trials if status.get(t.id) == "failed"]
    todo = [t for t in trials if t.id not in status or (retry_failed and status[t.id] == "failed")]
    return Plan(interleave(todo), done, [] if retry_failed else failed)


def interleave(trials: list[TrialConfig]) -> list[TrialConfig]:
    """The run order: families take turns (MoRe, LoRA, the references...), and within a family its arms, so that
    no arm runs all its trials first or beside the same neighbour, and a machine's drift spreads over every arm."""
    family = lambda t: t.arm if t.adapter is None else t.adapter.method  # noqa: E731
    return _round_robin([_round_robin(_groups(group, lambda t: t.arm)) for group in _groups(trials, family)])


def _groups(items: list, key) -> list[list]:
    groups: dict = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return list(groups.values())


def _round_robin(lists: list[list]) -> list:
    """One from each list in turn: [[a1, a2], [b1]] -> [a1, b1, a2]."""
    return [item for layer in itertools.zip_longest(*lists) for item in layer if item is not None]


def headline(rows: list[dict]) -> str:
    values = final_values([Measurement(**r) for r in rows])
    parts = []
    for metric, fmt in HEADLINE:
        value = values.get(metric)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            parts.append(fmt.format(value / 2**20 if metric == "peak_rss_bytes" else value))
    return ", ".join(parts)


def run_study(study: Study, trials: list[TrialConfig], executor, store: Store, retry_failed: bool = False, log=print) -> dict:
    work = plan(trials, store, retry_failed)
    log(f"study {study.name}: {len(trials)} trials; {len(work.done)} already done, {len(work.failed_kept)} failed "
        f"before (rerun with --retry-failed), {len(work.todo)} to run on {executor.name}")
    counts = {"ok": 0, "failed": 0}
    bar = tqdm(total=len(work.todo), unit="trial", dynamic_ncols=True, disable=not work.todo)

    def on_result(trial: TrialConfig, result: TrialResult) -> None:
        store.write(record_of(study.name, trial, result, getattr(executor, "jobs", None)))
        counts[result.status] += 1
        bar.update(1)
        bar.set_postfix(ok=counts["ok"], failed=counts["failed"], remaining=len(work.todo) - sum(counts.values()))
        outcome = headline(result.rows) if result.status == "ok" else f"FAILED {result.error_type}: {result.error}"
        tqdm.write(f"[{result.status}] {trial.id} {trial.describe()}: {outcome}")

    try:
        executor.run(work.todo, on_result)
    finally:
        bar.close()
    log(f"study {study.name}: {counts['ok']} ok, {counts['failed']} failed this run; results in {store.root}")
    return counts
