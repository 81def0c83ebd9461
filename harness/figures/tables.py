"""What the figures plot, as pandas tables: no drawing here, and no matplotlib.

From the frame `harness.store.load` returns (one row per measurement, joined with its trial's config), or
`study_results`, which puts the reference machine's results beside this machine's with a `source` column:
one row per trial (`per_trial`), one point per configuration and source over seeds with its spread
(`summarise_seeds`), each arm at the learning rate chosen on validation (`keep_best_lr`), the horizontal
reference lines (`baselines`), the Pareto front (`pareto_mask`), and the captions that say what a
figure shows. A table that lacks what a figure needs raises `MissingColumns` or `NothingToDraw`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from .. import paper as paper_tables
from ..adapters import NO_ADAPTER, SETTING_SHORT_NAMES, series_name
from ..analysis import choose_learning_rates
from ..stats import CONFIDENCE
from ..store import METRIC_COLUMNS, REFERENCE_MACHINE, final_values, load, machine_of
from ..tasks import TASKS
from ..trial import CALIBRATED, HEAD_ONLY

RESULT_COLUMNS = ["trial_id", "metric", "value", "step", "model", "task", "adapter"]
SOURCE, OURS = "source", "ours"  # the column that says whose results a row is; its value when there is none
CONFIG_COLUMNS = [SOURCE, "model", "task", "adapter", "label", "nblocks", "blk_sz", "blk_r", "r", "lora_alpha",
                  "target_modules", "profile", "steps", "batch", "seq_len", "device"]
TASK_METRICS = ("matthews", "f1", "pearson", "exact_match", "accuracy", "spearman")  # headline metric first
METRIC_NAMES = {"matthews": "Matthews correlation", "accuracy": "accuracy", "f1": "F1", "pearson": "Pearson r",
                "spearman": "Spearman rho", "exact_match": "exact match"}
COMMONSENSE_COLUMNS = {"boolq": "BoolQ", "piqa": "PIQA", "siqa": "SIQA", "hellaswag": "HellaSwag",
                       "winogrande": "WinoGrande", "arc_e": "ARC-e", "arc_easy": "ARC-e", "arc_c": "ARC-c",
                       "arc_challenge": "ARC-c", "openbookqa": "OBQA", "obqa": "OBQA"}
# cost -> candidates in order of preference: (metric, axis label, scale to the axis unit).
# Counts keep scale 1 and get engineering ticks (20k, 1.5M, 80G).
COSTS = {
    "params": [("trainable_params", "trainable parameters (count; adapter + task head)", 1.0)],
    "adapter_params": [("adapter_params", "adapter parameters (count)", 1.0),
                       ("trainable_params", "trainable parameters (count)", 1.0)],
    "flops": [("flops_train_step", "FLOPs per training step (FLOP)", 1.0),
              ("flops_forward", "FLOPs per forward pass (FLOP)", 1.0)],
    "memory": [("peak_memory_allocated_bytes", "peak GPU memory allocated (GiB)", 2.0**-30),
               ("peak_rss_bytes", "peak process memory, RSS (GiB)", 2.0**-30)],
    "time": [("time_step_s", "time per training step (ms)", 1e3)],
}
UPPER = 0.5 + CONFIDENCE / 2  # the upper quantile of a two-sided interval


class MissingColumns(ValueError):
    """A table lacks a column that a figure needs."""


class NothingToDraw(ValueError):
    """The table has the columns but no rows this figure can draw."""


def require(frame: pd.DataFrame, columns, figure: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise MissingColumns(f"{figure}: the table lacks column(s) {', '.join(missing)}; "
                             f"it needs {', '.join(columns)}")


# ---- whose results ---------------------------------------------------------------------------------

def ok_only(results: pd.DataFrame) -> pd.DataFrame:
    return results[results["status"] == "ok"] if "status" in results else results


def finished(study: str, results_dir=None) -> pd.DataFrame | None:
    """A study's finished trials under `results_dir`, or None when it has none."""
    try:
        results = ok_only(load(study, results_dir))
    except FileNotFoundError:
        return None
    return results if not results.empty else None


def study_results(study: str, results_dir=None, reference_dir=None) -> pd.DataFrame | None:
    """A study's finished trials under `results_dir` and, when `reference_dir` is given, the reference machine's
    beside them: one frame whose `source` column says whose each row is ("this machine" or "reference machine
    (2-core CPU)"). None when neither folder has any."""
    folders = [(machine_of(results_dir), results_dir)] + ([(REFERENCE_MACHINE, reference_dir)] if reference_dir else [])
    frames = [frame.assign(**{SOURCE: name}) for name, folder in folders
              if (frame := finished(study, folder)) is not None]
    return pd.concat(frames, ignore_index=True) if frames else None


def sources(frame: pd.DataFrame) -> pd.Series:
    """Whose each row is: the `source` column `study_results` adds, else "ours"."""
    return frame[SOURCE] if SOURCE in frame else pd.Series(OURS, index=frame.index, name=SOURCE)


def by_source(frame: pd.DataFrame):
    """(source, rows) in the order the sources come: this machine's first, then the reference machine's."""
    return frame.groupby(sources(frame), sort=False)


# ---- one row per trial ----------------------------------------------------------------------------

def per_trial(results: pd.DataFrame, metrics, step: int | None = None) -> pd.DataFrame:
    """One row per trial (per source and trial: two machines run the same trial ids): its config columns and the
    whole-model value of each metric at `step` (None: the final value)."""
    keys = [SOURCE, "trial_id"] if SOURCE in results else ["trial_id"]
    rows = results[results["metric"].isin(list(metrics))]
    rows = final_values(rows) if step is None else rows[(rows["step"] == step) & (rows["scope"].fillna("") == "")]
    # groupby-first keeps a trial whose value is NaN (not measured); pivot_table would drop it
    wide = rows.groupby(keys + ["metric"])["value"].first().unstack()
    wide = wide.reindex(columns=list(metrics))
    config = results.drop_duplicates(keys).set_index(keys)
    config = config[[c for c in config.columns if c not in METRIC_COLUMNS]]
    return config.join(wide, how="inner").reset_index()


def timed_in_turn(results: pd.DataFrame, metrics) -> pd.DataFrame | None:
    """A training study's interleaved timing trials (harness.spec) as one row per source, trial and adapter: the
    values the trial measured for the adapter (its rows scoped by the adapter's arm), the trial's model and step
    shape, and the adapter's configuration columns from another trial of that arm. None when a source has no
    such trial, or a timed arm has no other trial to name it by: the training trials' own times serve then."""
    if "kind" not in results:
        return None
    keys = [SOURCE] if SOURCE in results else []
    timed = results[(results["kind"] == "interleaved") & results["metric"].isin(list(metrics)) & results["step"].isna()]
    if timed.empty or set(sources(timed)) != set(sources(results)):
        return None
    wide = timed.groupby(keys + ["trial_id", "scope", "metric"])["value"].first().unstack()
    wide = wide.reindex(columns=list(metrics)).reset_index().rename(columns={"scope": "arm"})
    shape = timed.drop_duplicates(keys + ["trial_id"])[keys + ["trial_id", "model", "kind", "batch", "seq_len"]]
    arms = results[(results["kind"] != "interleaved") & results["arm"].isin(set(wide["arm"]))]
    arms = arms.drop_duplicates(keys + ["model", "arm"])
    arms = arms[[c for c in arms.columns if c not in [*METRIC_COLUMNS, "kind", "batch", "seq_len"]]]
    table = wide.merge(shape, on=keys + ["trial_id"]).merge(arms, on=keys + ["model", "arm"])
    return table if len(table) == len(wide) else None


def notes_of(results: pd.DataFrame, metric: str) -> str:
    """The first note of a metric's rows ("not measured: ...", "majority class"), or ""."""
    if "note" not in results:
        return ""
    notes = results.loc[results["metric"] == metric, "note"].dropna()
    notes = notes[notes != ""]
    return str(notes.iloc[0]) if len(notes) else ""


def config_keys(frame: pd.DataFrame) -> list[str]:
    return [c for c in CONFIG_COLUMNS if c in frame.columns]


def fmt(value) -> str:
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def unique_text(frame: pd.DataFrame, column: str) -> str:
    if column not in frame:
        return ""
    values = frame[column].dropna().unique()
    numeric = all(isinstance(v, (int, float, np.number)) for v in values)
    return "/".join(fmt(v) for v in sorted(values, key=None if numeric else str))


def row_series(row) -> str:
    """The series of a trial's row: "MoRe", "LoRA", "MoRe (square blocks)"."""
    return series_name(row["adapter"], row.get("label"))


def config_label(row) -> str:
    """A configuration, short enough for an axis: "MoRe k=4 r=4", "LoRA r=8"."""
    settings = [f"{short}={fmt(row[column])}" for column, short in SETTING_SHORT_NAMES.items()
                if column in row and pd.notna(row[column])]
    return " ".join([row_series(row), *settings])


# ---- captions --------------------------------------------------------------------------------------

def describe_ours(results: pd.DataFrame) -> list[str]:
    """One line per source: model, task, budget, device, seeds and, once `keep_best_lr` has chosen each arm's
    learning rate, how many it was chosen from."""
    return [f"{source}: " + " · ".join(describe_runs(frame)) for source, frame in by_source(results)]


def is_training_study(results: pd.DataFrame) -> bool:
    """Whether the results hold training trials (beside them, a training study's FLOPs-counting measure trials)."""
    return "kind" in results and bool((results["kind"] == "train").any())


def describe_runs(results: pd.DataFrame) -> list[str]:
    if is_training_study(results):  # its counting trials are captioned apart (harness.figures.cost)
        results = results[results["kind"] == "train"]
    parts = [f"model {unique_text(results, 'model')}"]
    if unique_text(results, "task"):
        parts.append(f"task {unique_text(results, 'task')}")
    budget = ", ".join(f"{name} {unique_text(results, name)}" for name in ("steps", "batch", "seq_len")
                       if unique_text(results, name))
    if budget:
        parts.append(budget)
    if unique_text(results, "device"):
        parts.append(f"device {unique_text(results, 'device')}")
    seeds = results["seed"].nunique() if "seed" in results else 1
    parts.append(f"{seeds} seed{'s' if seeds != 1 else ''}")
    if "rates" in results:
        rates = results["rates"].astype(int)
        tried = f"{rates.min()}–{rates.max()}" if rates.min() != rates.max() else f"{rates.max()}"
        parts.append("one learning rate per arm, none searched here" if rates.max() == 1 else
                     f"best of {tried} learning rates on validation")
    return parts


def describe_paper(table: pd.DataFrame) -> str:
    return f"paper: model {unique_text(table, 'model')} · task {unique_text(table, 'task')} · {paper_tables.SOURCE}"


def describe_spread(points: pd.DataFrame) -> str:
    seeds = set(points["n"])
    parts = []
    if max(seeds) > 1:
        parts.append(f"bands and bars: 95% intervals over {fmt(max(seeds))} seeds")
    if 1 in seeds:
        parts.append("error bars: 95% intervals, ±1.96 s.e. of the test set (one seed)")
    return "; ".join(parts)


def describe_sharing(results: pd.DataFrame) -> str:
    """For a time-per-step panel, per source: whether trials ran more than one at a time, sharing the machine
    (the `jobs` column; records older than it do not say)."""
    parts = []
    for source, frame in by_source(results):
        jobs = frame.drop_duplicates("trial_id")["jobs"] if "jobs" in frame else pd.Series([math.nan])
        if jobs.isna().any():
            parts.append(f"{source}: trials may have shared the machine (how many ran at a time was not recorded)")
        elif jobs.max() > 1:
            up_to = "up to " if jobs.min() != jobs.max() else ""
            parts.append(f"{source}: {up_to}{fmt(jobs.max())} trials ran at a time, sharing the machine")
        else:
            parts.append(f"{source}: one trial at a time")
    return "time per step: " + "; ".join(parts)


REFERENCE_NAMES = {HEAD_ONLY: "control: head only", CALIBRATED: "untouched model, head calibrated"}


# ---- the quality axis ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Quality:
    metric: str  # "matthews", ..., or "loss"
    column: str
    se_column: str
    axis_label: str
    subtitle: str
    scale: float
    higher_is_better: bool
    bounds: tuple[float, float]  # the values the quality can take: bands are clipped to them


def task_metric(results: pd.DataFrame) -> str:
    """The headline metric of the study's task(s): the task registry's first metric, else by priority."""
    available = {m[len("test_"):] for m in results["metric"].unique() if str(m).startswith("test_")}
    for task in results["task"].dropna().unique() if "task" in results else []:
        if task in TASKS and TASKS[task].metrics[0] in available:
            return TASKS[task].metrics[0]
    for metric in TASK_METRICS:
        if metric in available:
            return metric
    raise NothingToDraw("no final test_<metric> in the results: the study has no training trials")


def quality_axis(results: pd.DataFrame | None, quality: str = "metric", metric: str | None = None) -> Quality:
    """`quality`: "metric" (the final task metric, x 100) or "loss" (the final held-out loss)."""
    if quality == "loss":
        return Quality("loss", "test_loss", "test_loss_se", "test loss (nats, lower is better)",
                       "quality axis: test-split loss (lower is better)", 1.0, False, (0.0, math.inf))
    if quality != "metric":
        raise ValueError(f"quality must be 'metric' or 'loss', got {quality!r}")
    metric = metric or (task_metric(results) if results is not None else "matthews")
    name = METRIC_NAMES.get(metric, metric)
    lowest = -100.0 if metric in ("matthews", "pearson", "spearman") else 0.0  # correlations can be negative
    return Quality(metric, f"test_{metric}", f"test_{metric}_se", f"{name} × 100",
                   f"quality axis: test-split {name} × 100 (higher is better)", 100.0, True, (lowest, 100.0))


def figure_quality(figure: str, results, paper, quality: str, metric: str | None) -> Quality:
    """The quality axis of a figure that draws ours, the paper's, or both: ours when we have results,
    else the paper's own metric."""
    if results is None and paper is None:
        raise NothingToDraw(f"{figure}: neither our results nor the paper's table")
    if results is not None:
        return quality_axis(results, quality, metric)
    require(paper, ["metric"], "paper table")
    return quality_axis(None, "metric", str(paper["metric"].iloc[0]))


# ---- points, spreads and reference lines -----------------------------------------------------------

def trial_quality(results: pd.DataFrame, q: Quality, x_metric: str | None = None,
                  x_column: str | None = None) -> pd.DataFrame:
    """Per trial: config, `y` (quality, scaled), `y_se` (its test-set s.e.) and `x` (a metric or a column)."""
    metrics = [q.column, q.se_column] + ([x_metric] if x_metric else [])
    table = per_trial(ok_only(results), list(dict.fromkeys(metrics)))
    table = table[table[q.column].notna()].copy()
    if table.empty:
        raise NothingToDraw(f"no final {q.column} in the results")
    table["y"] = table[q.column] * q.scale
    table["y_se"] = table[q.se_column] * q.scale
    table["x"] = table[x_metric] if x_metric else table[x_column]
    table = table[table["x"].notna()]
    if "adapter" in table:
        table = table[table["adapter"] != "none"]  # controls are drawn as reference lines
    if table.empty:
        raise NothingToDraw(f"no trial has both {q.column} and {x_metric or x_column}")
    return table


def keep_best_lr(table: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    """The per-trial `table`'s rows at each arm's learning rate as `harness.analysis.choose_learning_rates` chooses
    it from `results` on the VALIDATION split (each source on its own trials), whatever the plotted test values
    say; `rates`: how many rates the arm tried."""
    if "lr" not in table or table["lr"].nunique() <= 1:
        return table.assign(rates=1)
    chosen = pd.concat([choose_learning_rates(frame).assign(**{SOURCE: source}) for source, frame in
                        by_source(results)])
    keys = ["model", "task", "arm", "lr"] + ([SOURCE] if SOURCE in table else [])
    return table.merge(chosen[keys + ["rates"]], on=keys)


def summarise_seeds(table: pd.DataFrame, bounds=(-math.inf, math.inf)) -> pd.DataFrame:
    """One point per configuration: the mean quality and its spread [lo, hi]: a 95% CI over seeds when there
    are several, else ±1.96 standard errors of the test set; clipped to the values the quality can take."""
    points = []
    for _, group in table.groupby(config_keys(table), dropna=False, sort=False):  # sources in their order
        n, y = len(group), group["y"].mean()
        # 95% over the seeds' values (Student's t), or over one seed's test set (normal)
        half = (scipy_stats.t.ppf(UPPER, n - 1) * group["y"].std(ddof=1) / math.sqrt(n) if n > 1
                else scipy_stats.norm.ppf(UPPER) * group["y_se"].iloc[0])
        points.append({**group.iloc[0].to_dict(), "x": group["x"].median(), "y": y, "n": n,
                       "lo": max(y - half, bounds[0]), "hi": min(y + half, bounds[1])})
    return pd.DataFrame(points)


def error_bars(points: pd.DataFrame):
    """Asymmetric error bars from [lo, hi] (clipping makes them asymmetric); None without a spread."""
    if "lo" not in points or points["lo"].isna().all():
        return None
    return np.vstack([(points["y"] - points["lo"]).fillna(0), (points["hi"] - points["y"]).fillna(0)])


def baselines(results: pd.DataFrame, q: Quality) -> pd.DataFrame:
    """Horizontal references per model and task: chance (the majority class, or 1/options) for a metric, whoever
    measured it, and per source the reference arms that train no adapter (no parameters to place on a log axis):
    the head-only control and the calibrated untouched model, each the median over its seeds."""
    ok = ok_only(results)
    references = []
    if q.metric != "loss":
        column = f"chance_{q.metric}"
        references.append((per_trial(ok, [column]), column, f"chance: {notes_of(results, column) or 'chance'}", ""))
    controls = ok[ok["adapter"].isin([NO_ADAPTER])] if "adapter" in ok else ok.iloc[0:0]
    for (source, arm), group in controls.groupby([sources(controls), "arm"], sort=False) if "arm" in controls else []:
        references.append((per_trial(group, [q.column]), q.column, REFERENCE_NAMES.get(arm, arm), source))
    lines, columns = [], ["model", "task", SOURCE, "y", "text"]
    for table, column, text, source in references:
        table = table[table[column].notna()] if column in table else table.iloc[0:0]
        if table.empty:
            continue
        line = table.groupby(["model", "task"])[column].median().reset_index()
        line["y"], line["text"], line[SOURCE] = line[column] * q.scale, text, source
        lines.append(line[columns])
    return pd.concat(lines, ignore_index=True) if lines else pd.DataFrame(columns=columns)


def our_points(results, q: Quality, figure: str, x_metric=None, x_column=None, series=row_series):
    """Per configuration and source, points for a quality figure (with a `series` column), the reference lines,
    and the caption lines that describe them."""
    require(results, RESULT_COLUMNS + ([x_column] if x_column else []), figure)
    table = keep_best_lr(trial_quality(results, q, x_metric=x_metric, x_column=x_column), results)
    points = summarise_seeds(table, q.bounds)
    points["series"] = [series(row) for _, row in points.iterrows()]
    return points, baselines(results, q), [*describe_ours(table), describe_spread(points)]


def paper_points(paper: pd.DataFrame | None, x_column: str, figure: str) -> pd.DataFrame | None:
    """The paper's series as points (`x`, `y`), with the key of the colour they share with ours."""
    if paper is None:
        return None
    require(paper, ["model", "task", "metric", "series", "adapter", x_column, "value"], figure)
    table = paper.copy()
    table["x"], table["y"] = table[x_column], table["value"]
    labels = table["label"] if "label" in table else pd.Series("", index=table.index)
    table["colour_key"] = [series_name(a, lab) for a, lab in zip(table["adapter"], labels.fillna(""))]
    return table


# ---- costs and the Pareto front --------------------------------------------------------------------

def cost_metric(results: pd.DataFrame, cost: str) -> tuple[str, str, float]:
    """The first candidate metric of a cost that has a measured (non-NaN) value: (metric, label, scale)."""
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {', '.join(COSTS)}, got {cost!r}")
    for metric, label, scale in COSTS[cost]:
        if results.loc[results["metric"] == metric, "value"].notna().any():
            return metric, label, scale
    names = ", ".join(m for m, _, _ in COSTS[cost])
    raise NothingToDraw(f"no measured value of {names} in the results")


def pareto_mask(cost: np.ndarray, quality: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """True for the points no other point beats on both cost (lower) and quality."""
    quality = quality if higher_is_better else -quality
    keep = np.ones(len(cost), dtype=bool)
    for i in range(len(cost)):
        no_worse = (cost <= cost[i]) & (quality >= quality[i])
        better = (cost < cost[i]) | (quality > quality[i])
        keep[i] = not (no_worse & better).any()
    return keep


# ---- the commonsense table -------------------------------------------------------------------------

def commonsense_grid(paper: pd.DataFrame, results: pd.DataFrame | None = None) -> tuple[pd.DataFrame, int, list[str]]:
    """The paper's Table 1 (accuracy %, one row per method, one column per task) with our rows under it
    (one per model and adapter configuration, mean over seeds). Returns the grid, how many of its rows are
    the paper's, and the caption lines."""
    require(paper, ["method", "task", "accuracy"], "commonsense_heatmap (paper table)")
    columns = paper_tables.COMMONSENSE_TASKS
    rows = paper.assign(row=lambda t: "paper · " + t["method"] + (" · " + t["params"] if "params" in t else ""))
    grid = rows.pivot_table(index="row", columns="task", values="accuracy", sort=False).reindex(columns=columns)
    captions = [f"paper: Table 1 of {paper_tables.SOURCE}, model {unique_text(paper, 'model')}"]
    if results is not None:
        ours, described = our_commonsense_rows(results)
        if ours.empty:
            captions.append("ours: no commonsense results yet")
        else:
            grid = pd.concat([grid, ours.reindex(columns=columns)])
            captions += [*described, "ours: Avg left blank unless all eight tasks ran"]
    return grid, rows["row"].nunique(), captions


def our_commonsense_rows(results: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """One row per source, model and adapter configuration (each arm at its chosen learning rate, mean over
    seeds), and the caption lines that describe them."""
    require(results, RESULT_COLUMNS, "commonsense_heatmap (our results)")
    table = per_trial(ok_only(results), ["test_accuracy"])
    table = table[table["task"].isin(COMMONSENSE_COLUMNS) & table["test_accuracy"].notna()].copy()
    if table.empty:
        return pd.DataFrame(), []
    table = keep_best_lr(table, results)
    table["column"] = table["task"].map(COMMONSENSE_COLUMNS)
    steps = table["steps"].map(lambda s: f" · {fmt(s)} steps") if "steps" in table else ""
    labels = [config_label(r) for _, r in table.iterrows()]
    table["row"] = sources(table) + " · " + table["model"].astype(str) + " · " + labels + steps
    grid = table.pivot_table(index="row", columns="column", values="test_accuracy", aggfunc="mean") * 100
    eight = [c for c in paper_tables.COMMONSENSE_TASKS if c != "Avg"]
    if set(eight) <= set(grid.columns):
        grid["Avg"] = grid[eight].mean(axis=1).where(grid[eight].notna().all(axis=1))
    return grid, describe_ours(table)
