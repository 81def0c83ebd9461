"""A study's stored results turned into answers: which learning rate each arm runs at, and what each arm is worth
against the references and against any other arm, with intervals over examples and seeds.

- An arm is what a study compares across learning rates and seeds (`TrialConfig.arm`): an adapter's label,
  `head only` (the new head trains alone) or `calibrated` (the untouched model with its head fitted).
- `choose_learning_rates`: each (model, task, arm)'s rate is the one with the best final validation value of
  the task's first metric, lower validation loss breaking ties, at the tuning seed (the smallest seed that ran
  every rate of the arm). Test rows are never read for it.
- `summarise` / `write_summary`: one row per arm at its chosen rate (results/<study>/analysis.csv): the test
  metric and loss with 95% intervals (`harness.stats`), the paired difference to each reference, and `learns`:
  1 when the arm beats the stronger reference (the one with the higher test metric) by more than 2 paired
  standard errors in the task metric. Failed training trials are counted per arm (`failed`, with the first one's
  `error`); an arm none of whose trials finished is a row with only those.
- `compare_arms`: the paired difference of any two arms, each at its chosen rate, on the seeds both ran.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from . import stats
from .store import CALIBRATED, HEAD_ONLY, Store, final_values, load, write_atomically
from .tasks import TASKS

REFERENCES = (HEAD_ONLY, CALIBRATED)
GROUP = ["model", "task", "arm"]
SPLITS = ("validation", "test")


def task_metric(task: str) -> str:
    """The metric a task's arms are chosen and judged by: its first."""
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r} in the results; known: {', '.join(TASKS)}.")
    return TASKS[task].metrics[0]


def trained(frame: pd.DataFrame) -> pd.DataFrame:
    """The final whole-model rows of the training trials that finished."""
    if "arm" not in frame:
        study = frame["study"].iloc[0] if len(frame) else "the study"
        raise ValueError(f"The results of {study} predate arms, validation splits and per-example outputs: run it "
                         f"again (`python -m harness run {study} --fresh`; the old results are moved aside).")
    frame = final_values(frame[(frame["status"] == "ok") & frame["task"].notna()])
    if "kind" in frame:
        frame = frame[frame["kind"] == "train"]
    return frame


def _final(frame: pd.DataFrame, metric: str) -> pd.Series:
    """trial_id -> the final value of `metric`."""
    rows = frame[frame["metric"] == metric]
    return rows.drop_duplicates("trial_id").set_index("trial_id")["value"]


def choose_learning_rates(study_frame: pd.DataFrame) -> pd.DataFrame:
    """Per (model, task, arm): the learning rate with the best validation metric at the tuning seed.

    Columns: model, task, arm, metric, lr (the chosen rate), rates (how many were tried), tuning_seed,
    val_metric and val_loss (at the chosen rate), val_by_lr (every tried rate's validation metric)."""
    frame = trained(study_frame)
    frame = frame[frame["metric"].str.startswith("val_")]  # the choice never sees a test row
    columns = GROUP + ["metric", "lr", "rates", "tuning_seed", "val_metric", "val_loss", "val_by_lr"]
    out = []
    for (model, task, arm), group in frame.groupby(GROUP, sort=True):
        metric = task_metric(task)
        trials = group.drop_duplicates("trial_id").set_index("trial_id")[["lr", "seed"]]
        trials["value"] = _final(group, f"val_{metric}")
        trials["loss"] = _final(group, "val_loss")
        rates = sorted(trials["lr"].unique())
        # the tuning seed ran every rate; failing that (a trial failed), the seed that ran the most, smallest first
        covered = trials.groupby("seed")["lr"].nunique()
        tuning_seed = int(covered[covered == covered.max()].index.min())
        tuning = trials[trials["seed"] == tuning_seed].sort_values("lr")
        # best metric first (a NaN metric last), lower loss breaking ties
        ranked = tuning.assign(key=-tuning["value"].fillna(-math.inf)).sort_values(["key", "loss"], kind="stable")
        best = ranked.iloc[0]
        by_lr = "; ".join(f"{lr:g}: {value:.4f}" for lr, value in zip(tuning["lr"], tuning["value"]))
        out.append([model, task, arm, metric, float(best["lr"]), len(rates), tuning_seed, float(best["value"]),
                    float(best["loss"]), by_lr])
    return pd.DataFrame(out, columns=columns)


def chosen_rates(study: str, results_dir: Path | str | None = None) -> dict:
    """{(model, task, arm): the learning rate chosen on validation} from a study's stored results; {} when none."""
    try:
        frame = load(study, results_dir)
    except FileNotFoundError:
        return {}
    if frame.empty or "arm" not in frame:
        return {}
    chosen = choose_learning_rates(frame)
    return {(row.model, row.task, row.arm): row.lr for row in chosen.itertuples()}


def arm_trials(frame: pd.DataFrame, model: str, task: str, arm: str, lr: float) -> pd.DataFrame:
    """One row per finished trial of an arm at one learning rate."""
    trials = frame[(frame["status"] == "ok") & (frame["model"] == model) & (frame["task"] == task)
                   & (frame["arm"] == arm) & frame["lr"].map(lambda value: math.isclose(value, lr))]
    return trials.drop_duplicates("trial_id")


def arm_outputs(store: Store, frame: pd.DataFrame, model: str, task: str, arm: str, lr: float,
                split: str) -> stats.Outputs:
    """{seed: that seed's per-example outputs on `split`} for one arm at one learning rate (finished trials)."""
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; choose {' or '.join(SPLITS)}.")
    trials = arm_trials(frame, model, task, arm, lr)
    if trials.empty:
        raise ValueError(f"No finished trial of {arm!r} on {model} / {task} at lr {lr:g}.")
    repeated = trials[trials["seed"].duplicated(keep=False)]
    if not repeated.empty:
        raise ValueError(f"Several trials of {arm!r} at lr {lr:g} share a seed ({', '.join(repeated['trial_id'])}): "
                         "an arm's trials must differ by seed and learning rate only.")
    out = {}
    for trial_id, seed in zip(trials["trial_id"], trials["seed"]):
        examples = store.examples(trial_id)
        out[int(seed)] = examples[examples["split"] == split].reset_index(drop=True)
    return out


def _study_choices(study: str, results_dir: Path | str | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The study's joined results and each arm's chosen learning rate."""
    frame = load(study, results_dir)
    chosen = choose_learning_rates(frame)
    if chosen.empty:
        raise ValueError(f"Study {study!r} has no finished training trial: nothing to analyse.")
    return frame, chosen


def _interval_columns(prefix: str, interval: stats.Interval | None) -> dict:
    names = ["", "_se", "_low", "_high"]
    if interval is None:
        return {prefix + name: math.nan for name in names}
    values = [interval.value, interval.se, interval.low, interval.high]
    return {prefix + name: value for name, value in zip(names, values)}


def _reference_key(reference: str) -> str:
    return reference.replace(" ", "_")


def summarise(study: str, results_dir: Path | str | None = None,
              n_resamples: int | None = None) -> pd.DataFrame:
    """One row per (model, task, arm) at its chosen learning rate; see the module's docstring. `n_resamples`:
    bootstrap resamples per interval (None: `harness.stats.N_RESAMPLES`)."""
    n_resamples = n_resamples or stats.N_RESAMPLES
    frame, chosen = _study_choices(study, results_dir)
    store = Store(study, results_dir)
    final = trained(frame)
    rows = []
    for (model, task), arms in chosen.groupby(["model", "task"], sort=False):
        metric = arms["metric"].iloc[0]
        test = {arm: arm_outputs(store, frame, model, task, arm, lr, "test") for arm, lr in zip(arms["arm"], arms["lr"])}
        scores = {arm: {m: stats.estimate(outputs, m, n_resamples) for m in (metric, "loss")}
                  for arm, outputs in test.items()}
        references = [r for r in REFERENCES if r in test]
        stronger = max(references, key=lambda r: scores[r][metric].value) if references else None
        for choice in arms.itertuples(index=False):
            arm = choice.arm
            at_lr = final[(final["model"] == model) & (final["task"] == task) & (final["arm"] == arm)
                          & final["lr"].map(lambda value: math.isclose(value, choice.lr))]
            row = {"model": model, "task": task, "arm": arm, "lr": choice.lr, "rates": choice.rates,
                   "seeds": scores[arm][metric].seeds, "examples": scores[arm][metric].examples,
                   "trainable_params": _final(at_lr, "trainable_params").median(),
                   "adapter_params": _final(at_lr, "adapter_params").median(), "metric": metric,
                   "val_metric": choice.val_metric, **_interval_columns("test_metric", scores[arm][metric]),
                   **_interval_columns("test_loss", scores[arm]["loss"]),
                   "chance_metric": _final(at_lr, f"chance_{metric}").median()}
            strong = None  # the difference to the stronger reference in the task metric
            for reference in REFERENCES:
                key = _reference_key(reference)
                present = reference in test and reference != arm
                for name in (metric, "loss"):
                    difference = (stats.paired_difference(test[arm], test[reference], name, n_resamples)
                                  if present else None)
                    row.update(_interval_columns(f"vs_{key}_{'loss' if name == 'loss' else 'metric'}", difference))
                    if present and name == metric and reference == stronger:
                        strong = difference
            row["stronger_reference"] = stronger
            row["learns"] = (pd.NA if arm in REFERENCES or stronger is None
                             else int(strong.margin() > 0 and strong.resolved))  # beats it by more than 2 paired SE
            rows.append(row)
    out = pd.DataFrame(rows)
    out["learns"] = out["learns"].astype("Int64")
    return with_failures(out, failed_trials(store))


def failed_trials(store: Store) -> pd.DataFrame:
    """The study's training trials that did not finish (their records keep the reason: error_type, error)."""
    trials = store.trials()
    failed = trials[(trials["status"] != "ok") & trials["task"].notna()]
    return failed[failed["kind"] == "train"] if "kind" in failed else failed


def with_failures(table: pd.DataFrame, failed: pd.DataFrame) -> pd.DataFrame:
    """`table` with each arm's failed training trials counted (`failed`) and the first one's reason (`error`); an arm
    none of whose trials finished gets a row of its own, with only these filled in."""
    reasons = (failed["error_type"].fillna("error").astype(str) + ": " + failed["error"].fillna("").astype(str)
               if len(failed) else pd.Series(dtype=str))
    counts = (failed.assign(reason=reasons).groupby(GROUP, sort=True)
              .agg(failed=("trial_id", "size"), error=("reason", "first")).reset_index())
    out = table.merge(counts, on=GROUP, how="outer")
    out["failed"] = out["failed"].fillna(0).astype(int)
    out["error"] = out["error"].fillna("")
    counted = [c for c in ("rates", "seeds", "examples") if c in out]
    out[counted] = out[counted].astype("Int64")  # a failed arm's empty cells made them floats
    return out


def write_summary(study: str, results_dir: Path | str | None = None,
                  n_resamples: int | None = None) -> tuple[pd.DataFrame, Path]:
    """`summarise`, written to results/<study>/analysis.csv; returns the table and the path."""
    table = summarise(study, results_dir, n_resamples)
    path = Store(study, results_dir).root / "analysis.csv"
    write_atomically(path, table.to_csv(index=False))
    return table, path


@dataclass(frozen=True)
class Comparison:
    """Two arms of one (model, task), each at its chosen rate, on the seeds both ran."""

    model: str
    task: str
    split: str
    arms: tuple[str, str]
    lrs: tuple[float, float]
    metric: str
    values: dict  # arm -> {metric name: Interval}
    difference: dict  # metric name -> Interval of arms[0] - arms[1]


def resolve_arm(name: str, arms: list[str]) -> str:
    """An arm named exactly, or by a unique part of its name: whole `key=value` pieces first (`r=16` is lora(r=16),
    not more(blk_r=16)), then any substring."""
    if name in arms:
        return name
    piece = re.compile(rf"(?<![\w.]){re.escape(name)}(?![\w.])")
    for matches in ([a for a in arms if piece.search(a)], [a for a in arms if name in a]):
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise ValueError(f"{name!r} names several arms ({'; '.join(matches)}): give more of the name.")
    raise ValueError(f"No arm {name!r}; the arms are: {'; '.join(arms)}.")


class Side(NamedTuple):
    """One arm of a comparison: where it ran and the rate its study chose."""

    study: str
    model: str
    task: str
    arm: str
    lr: float
    metric: str
    frame: pd.DataFrame

    @property
    def trial_ids(self) -> set[str]:
        return set(arm_trials(self.frame, self.model, self.task, self.arm, self.lr)["trial_id"])


def compare_arms(study: str, a: str, b: str, split: str = "test", results_dir: Path | str | None = None,
                 model: str | None = None, task: str | None = None,
                 n_resamples: int | None = None) -> Comparison:
    """The paired difference a - b in the task metric and the loss, each arm at its chosen learning rate.
    An arm named `OTHER:arm` is taken from study OTHER (its own choice of rate; `study` is the study of an arm
    named without one), paired on the same questions and seeds: two studies of one model and task. `model` and
    `task` narrow a study that ran several."""
    n_resamples = n_resamples or stats.N_RESAMPLES
    named = [_study_and_arm(study, name) for name in (a, b)]
    loaded = {source: _study_choices(source, results_dir) for source, _ in named}  # each study read once
    sides = [_side(source, name, *loaded[source], model, task) for source, name in named]
    first, second = sides
    if (first.model, first.task) != (second.model, second.task):
        raise ValueError(f"{a!r} ran on {first.model} / {first.task} and {b!r} on {second.model} / {second.task}: "
                         "a paired comparison needs one model and task.")
    if first.trial_ids == second.trial_ids:
        raise ValueError(f"{a!r} and {b!r} are the same arm ({first.arm} at lr {first.lr:g}, the same trials): "
                         "name two different arms.")
    names = [side.arm if side.study == study else f"{side.study}:{side.arm}" for side in sides]
    outputs = [arm_outputs(Store(side.study, results_dir), side.frame, side.model, side.task, side.arm, side.lr, split)
               for side in sides]
    common = set(outputs[0]) & set(outputs[1])
    if not common:
        raise ValueError(f"{names[0]} ran seeds {sorted(outputs[0])} and {names[1]} seeds {sorted(outputs[1])}: "
                         "a paired comparison needs a seed both ran.")
    outputs = [{seed: arm[seed] for seed in sorted(common)} for arm in outputs]
    for seed in sorted(common):
        ids = [set(arm[seed]["example_id"]) for arm in outputs]
        if ids[0] != ids[1]:
            raise ValueError(f"At seed {seed}, {names[0]} was evaluated on {len(ids[0])} {split} examples and "
                             f"{names[1]} on {len(ids[1])}, {len(ids[0] & ids[1])} of them shared: a paired "
                             "comparison needs the same examples (the same task splits and example limits).")
    measures = (first.metric, "loss")
    values = {name: {m: stats.estimate(arm, m, n_resamples) for m in measures} for name, arm in zip(names, outputs)}
    difference = {m: stats.paired_difference(*outputs, m, n_resamples) for m in measures}
    return Comparison(first.model, first.task, split, tuple(names), (first.lr, second.lr), first.metric, values,
                      difference)


def _study_and_arm(study: str, name: str) -> tuple[str, str]:
    """(study, arm name) from `arm` (in `study`) or `STUDY:arm`; the prefix ends at the last ':' before any
    parenthesis."""
    head, parenthesis, rest = name.partition("(")
    source, colon, head = head.rpartition(":")
    name, source = head + parenthesis + rest, source if colon else study
    if not name or not source:
        raise ValueError(f"{name or source!r}: name an arm as ARM or STUDY:ARM (e.g. rank_ablation:r=16).")
    return source, name


def _side(source: str, name: str, frame: pd.DataFrame, chosen: pd.DataFrame, model: str | None,
          task: str | None) -> Side:
    """The arm `name` of study `source` (its results `frame`, its arms' `chosen` rates) at its chosen rate."""
    for column, value in (("model", model), ("task", task)):
        if value is not None:
            if value not in set(chosen[column]):
                raise ValueError(f"No {column} {value!r} in {source}; it has {', '.join(sorted(set(chosen[column])))}.")
            chosen = chosen[chosen[column] == value]
    groups = chosen[["model", "task"]].drop_duplicates()
    if len(groups) != 1:
        pairs = ", ".join(f"{m} / {t}" for m, t in groups.itertuples(index=False)) or "none"
        raise ValueError(f"Study {source!r} has finished training trials on {pairs}: name one model and task.")
    try:
        arm = resolve_arm(name, list(chosen["arm"]))
    except ValueError as error:
        raise ValueError(f"In study {source!r}: {error}") from None
    row = chosen.set_index("arm").loc[arm]
    (model, task), = groups.itertuples(index=False)
    return Side(source, model, task, arm, row["lr"], row["metric"], frame)


def _interval_text(interval: stats.Interval) -> str:
    percent = int(stats.CONFIDENCE * 100)
    return f"{interval.value:.4f} [{percent}% {interval.low:.4f}, {interval.high:.4f}]"


def format_comparison(comparison: Comparison) -> str:
    """The comparison in plain lines: both arms' values, the difference, its z and whether it is resolved."""
    c = comparison
    first, second = c.arms
    sample = c.difference[c.metric]
    lines = [f"{c.model} / {c.task}, {c.split} split, {sample.seeds} seeds x {sample.examples} examples, paired:"]
    for name, lr in zip(c.arms, c.lrs):
        lines.append(f"  {name} (lr {lr:g}): " + ", ".join(
            f"{m} {_interval_text(c.values[name][m])}" for m in (c.metric, "loss")))
    for m, difference in c.difference.items():
        verdict = "resolved" if difference.resolved else f"not resolved (within {stats.RESOLVED_SE:g} paired SE)"
        better = first if difference.margin() > 0 else second
        lines.append(f"  {m} difference ({first} - {second}): {_interval_text(difference)}, z {difference.z:.2f}, "
                     f"{verdict}" + (f"; {better} is better" if difference.resolved else ""))
    return "\n".join(lines)


def format_summary(table: pd.DataFrame) -> str:
    """`summarise`'s table in plain lines: per model and task, each arm's test values with intervals, its
    difference to the stronger reference and whether it learns."""
    lines = []
    for (model, task), arms in table.groupby(["model", "task"], sort=False):
        finished = arms[arms["metric"].notna()]
        metric = finished["metric"].iloc[0] if len(finished) else "metric"
        stronger = finished["stronger_reference"].iloc[0] if len(finished) else None
        header = f"{model} / {task}: test {metric} and loss, 95% intervals"
        lines.append(header + (f"; difference to the stronger reference, {stronger}" if isinstance(stronger, str)
                               else "; no reference arm"))
        for arm in arms.itertuples(index=False):
            if pd.isna(arm.metric):
                lines.append(f"  {arm.arm:<32} failed: all {arm.failed} of its trials; {first_line(arm.error)}")
                continue
            line = (f"  {arm.arm:<32} lr {arm.lr:<8g} (best of {arm.rates} on validation), {arm.seeds} seeds, "
                    f"{arm.trainable_params:,.0f} trainable: {metric} {arm.test_metric:.4f} "
                    f"[{arm.test_metric_low:.4f}, {arm.test_metric_high:.4f}], loss {arm.test_loss:.4f} "
                    f"[{arm.test_loss_low:.4f}, {arm.test_loss_high:.4f}]")
            if not pd.isna(arm.learns):
                key = _reference_key(stronger)
                value, se = getattr(arm, f"vs_{key}_metric"), getattr(arm, f"vs_{key}_metric_se")
                line += f"; {value:+.4f} (z {value / se if se else math.nan:.2f}): " + (
                    "learns" if arm.learns else f"does not learn (needs more than {stats.RESOLVED_SE:g} SE)")
            if arm.failed:
                line += f"; {arm.failed} trial(s) failed ({first_line(arm.error)})"
            lines.append(line)
    return "\n".join(lines)


def first_line(text: str, width: int = 160) -> str:
    """An error's first line, cut to `width` characters (the whole reason stays in analysis.csv and the record)."""
    line = str(text).strip().splitlines()[0] if str(text).strip() else ""
    return line if len(line) <= width else line[:width - 3] + "..."
