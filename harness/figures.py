"""Figures from the tidy tables: results/<study>/{trials,metrics}.csv -> results/<study>/figures/*.png|pdf.

Every figure function reads tidy tables only (the frame `harness.store.load` returns, and the paper's
tables from `harness.paper`), writes a PNG and a PDF under `out_dir` and returns their paths. Ours are
solid lines with filled markers, the paper's dashed lines with hollow markers; the legend names the model
and task of each series, and the title's caption states model, task, budget, device and seeds.

    python -m harness.figures [STUDY ...] [--paper] [--results-dir DIR]

A figure function raises `MissingColumns` (a ValueError) naming the columns it needs and lacks, and
`NothingToDraw` (a ValueError) when the table has no rows it can draw; `draw_study` prints and skips those.
"""
from __future__ import annotations

import argparse
import functools
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; notebooks show the saved PNGs

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import (EngFormatter, LogLocator, MaxNLocator, NullFormatter, NullLocator,  # noqa: E402
                               ScalarFormatter)

from . import paper as paper_tables  # noqa: E402
from .store import RESULTS_DIR, load  # noqa: E402

# ---- vocabulary -----------------------------------------------------------------------------------

MEASUREMENT_COLUMNS = ["trial_id", "metric", "value", "unit", "step", "scope", "note"]
RESULT_COLUMNS = ["trial_id", "metric", "value", "step", "model", "task", "adapter"]
ADAPTER_SETTINGS = {"nblocks": "k", "blk_sz": "b", "blk_r": "r", "r": "r"}  # short names for labels
CONFIG_COLUMNS = ["model", "task", "adapter", "label", "nblocks", "blk_sz", "blk_r", "r", "lora_alpha",
                  "target_modules", "profile", "steps", "batch", "seq_len", "device"]
TASK_METRICS = ("matthews", "f1", "pearson", "exact_match", "accuracy", "spearman")  # headline metric first
METRIC_NAMES = {"matthews": "Matthews correlation", "accuracy": "accuracy", "f1": "F1", "pearson": "Pearson r",
                "spearman": "Spearman rho", "exact_match": "exact match"}
FAMILY_NAMES = {"more": "MoRe", "lora": "LoRA", "dora": "DoRA", "none": "no adapter"}
FAMILY_ORDER = ["MoRe", "LoRA", "MoRe (square blocks)"]  # fixed colours for the common series
COMMONSENSE_COLUMNS = {"boolq": "BoolQ", "piqa": "PIQA", "siqa": "SIQA", "hellaswag": "HellaSwag",
                       "winogrande": "WinoGrande", "arc_e": "ARC-e", "arc_easy": "ARC-e", "arc_c": "ARC-c",
                       "arc_challenge": "ARC-c", "openbookqa": "OBQA", "obqa": "OBQA"}
# Which figures a known study gets; other studies get whatever their tables allow.
FIGURES_BY_STUDY = {
    "rank_ablation": ["quality_vs_params", "pareto", "cost"],
    "block_ablation": ["quality_vs_nblocks", "cost"],
    "efficiency": ["cost"],
    "commonsense": ["commonsense", "cost"],
}

COLUMN_WIDTH_IN = 3.4  # one column of a two-column paper
LINE_IN = 0.14  # the height of a line of caption or legend text
OURS_MARKERS = ["o", "^", "D", "v", "P", "X"]
STYLE = {"font.size": 7, "axes.titlesize": 7, "axes.labelsize": 7, "xtick.labelsize": 6.5,
         "ytick.labelsize": 6.5, "legend.fontsize": 6, "figure.titlesize": 7, "pdf.fonttype": 42,
         "grid.alpha": 0.35, "savefig.dpi": 200}
# Student's t at 97.5% for 1..30 degrees of freedom: 95% confidence bands over a few seeds.
T_975 = [12.71, 4.30, 3.18, 2.78, 2.57, 2.45, 2.36, 2.31, 2.26, 2.23, 2.20, 2.18, 2.16, 2.14, 2.13, 2.12, 2.11,
         2.10, 2.09, 2.09, 2.08, 2.07, 2.07, 2.06, 2.06, 2.06, 2.05, 2.05, 2.05, 2.04]


class MissingColumns(ValueError):
    """A table lacks a column that a figure needs."""


class NothingToDraw(ValueError):
    """The table has the columns but no rows this figure can draw."""


def require(frame: pd.DataFrame, columns, figure: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise MissingColumns(f"{figure}: the table lacks column(s) {', '.join(missing)}; "
                             f"it needs {', '.join(columns)}")


# ---- reading the tidy tables -----------------------------------------------------------------------

def ok_only(results: pd.DataFrame) -> pd.DataFrame:
    return results[results["status"] == "ok"] if "status" in results else results


def per_trial(results: pd.DataFrame, metrics, step: int | None = None) -> pd.DataFrame:
    """One row per trial: its config columns and the whole-model value of each metric at `step`
    (None: the final value, whose step is empty)."""
    rows = results[results["metric"].isin(list(metrics))]
    rows = rows[rows["step"].isna()] if step is None else rows[rows["step"] == step]
    if "scope" in rows:
        rows = rows[rows["scope"].fillna("") == ""]  # per-module rows are not the model's value
    # groupby-first keeps a trial whose value is NaN (not measured); pivot_table would drop it
    wide = rows.groupby(["trial_id", "metric"])["value"].first().unstack()
    wide = wide.reindex(columns=list(metrics))
    config = results.drop_duplicates("trial_id").set_index("trial_id")
    config = config[[c for c in config.columns if c not in MEASUREMENT_COLUMNS]]
    return config.join(wide, how="inner").reset_index()


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


def family(adapter, label=None) -> str:
    """The series a trial belongs to: "MoRe", "LoRA", "MoRe (square blocks)"."""
    name = FAMILY_NAMES.get(adapter, str(adapter))
    return f"{name} ({label})" if isinstance(label, str) and label else name


def config_label(row) -> str:
    """A configuration, short enough for an axis: "MoRe k=4 r=4", "LoRA r=8"."""
    settings = [f"{short}={fmt(row[column])}" for column, short in ADAPTER_SETTINGS.items()
                if column in row and pd.notna(row[column])]
    return " ".join([family(row["adapter"], row.get("label")), *settings])


# ---- captions --------------------------------------------------------------------------------------

def describe_ours(results: pd.DataFrame) -> str:
    """Model, task, budget, device and seeds, read from the tables."""
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
    return "ours: " + " · ".join(parts)


def describe_paper(table: pd.DataFrame) -> str:
    return f"paper: model {unique_text(table, 'model')} · task {unique_text(table, 'task')} · {paper_tables.SOURCE}"


def describe_spread(points: pd.DataFrame) -> str:
    seeds = set(points["n"])
    parts = []
    if max(seeds) > 1:
        parts.append(f"bands and bars: 95% CI over {fmt(max(seeds))} seeds")
    if 1 in seeds:
        parts.append("error bars: ±1 s.e. of the eval set (one seed)")
    return "; ".join(parts)


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
    available = {m[len("eval_"):] for m in results["metric"].unique() if str(m).startswith("eval_")}
    try:
        from .tasks import TASKS
    except ImportError:  # the registry is optional here
        TASKS = {}
    for task in results["task"].dropna().unique() if "task" in results else []:
        if task in TASKS and TASKS[task].metrics[0] in available:
            return TASKS[task].metrics[0]
    for metric in TASK_METRICS:
        if metric in available:
            return metric
    raise NothingToDraw("no final eval_<metric> in the results: the study has no training trials")


def quality_axis(results: pd.DataFrame | None, quality: str = "metric", metric: str | None = None) -> Quality:
    """`quality`: "metric" (the final task metric, x 100) or "loss" (the final held-out loss)."""
    if quality == "loss":
        return Quality("loss", "eval_loss", "eval_loss_se", "held-out loss (nats, lower is better)",
                       "quality axis: held-out loss (lower is better)", 1.0, False, (0.0, math.inf))
    if quality != "metric":
        raise ValueError(f"quality must be 'metric' or 'loss', got {quality!r}")
    metric = metric or (task_metric(results) if results is not None else "matthews")
    name = METRIC_NAMES.get(metric, metric)
    lowest = -100.0 if metric in ("matthews", "pearson", "spearman") else 0.0  # correlations can be negative
    return Quality(metric, f"eval_{metric}", f"eval_{metric}_se", f"{name} × 100",
                   f"quality axis: final eval {name} × 100 (higher is better)", 100.0, True, (lowest, 100.0))


def trial_quality(results: pd.DataFrame, q: Quality, x_metric: str | None = None,
                  x_column: str | None = None) -> pd.DataFrame:
    """Per trial: config, `y` (quality, scaled), `y_se` (its eval-set s.e.) and `x` (a metric or a column)."""
    metrics = [q.column, q.se_column] + ([x_metric] if x_metric else [])
    table = per_trial(ok_only(results), metrics)
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


def keep_best_lr(table: pd.DataFrame, higher_is_better: bool) -> tuple[pd.DataFrame, int]:
    """When a study sweeps learning rates, each configuration keeps its best (mean over seeds). Returns the
    most learning rates any one configuration was tried with (families with one rate each count 1)."""
    keys = [k for k in config_keys(table) if k != "lr"]
    if "lr" not in table:
        return table, 1
    tried = int(table.groupby(keys, dropna=False)["lr"].nunique().max())
    if tried <= 1:
        return table, 1
    means = table.groupby(keys + ["lr"], dropna=False)["y"].mean().reset_index()
    pick = "idxmax" if higher_is_better else "idxmin"
    best = means.loc[getattr(means.groupby(keys, dropna=False)["y"], pick)()]
    return table.merge(best[keys + ["lr"]], on=keys + ["lr"]), tried


def summarise_seeds(table: pd.DataFrame, bounds=(-math.inf, math.inf)) -> pd.DataFrame:
    """One point per configuration: the mean quality and its spread [lo, hi]: a 95% CI over seeds when there
    are several, else ±1 standard error of the eval set; clipped to the values the quality can take."""
    points = []
    for _, group in table.groupby(config_keys(table), dropna=False):
        n, y = len(group), group["y"].mean()
        half = T_975[min(n - 1, 30) - 1] * group["y"].std(ddof=1) / math.sqrt(n) if n > 1 else group["y_se"].iloc[0]
        points.append({**group.iloc[0].to_dict(), "x": group["x"].median(), "y": y, "n": n,
                       "lo": max(y - half, bounds[0]), "hi": min(y + half, bounds[1])})
    return pd.DataFrame(points)


def error_bars(points: pd.DataFrame):
    """Asymmetric error bars from [lo, hi] (clipping makes them asymmetric); None without a spread."""
    if "lo" not in points or points["lo"].isna().all():
        return None
    return np.vstack([(points["y"] - points["lo"]).fillna(0), (points["hi"] - points["y"]).fillna(0)])


def baselines(results: pd.DataFrame, q: Quality) -> pd.DataFrame:
    """Horizontal references per model and task: the majority class (or chance) for a metric, the untrained
    model (step 0), and the control trials that train no adapter (no parameters to place on a log axis)."""
    ok = ok_only(results)
    references = []
    if q.metric != "loss":
        column = f"baseline_{q.metric}"
        references.append((per_trial(ok, [column]), column, f"untrained: {notes_of(results, column) or 'baseline'}"))
    references.append((per_trial(ok, [q.column], step=0), q.column, "untrained model (step 0)"))
    controls = per_trial(ok[ok["adapter"].isin(["none"])], [q.column]) if "adapter" in ok else pd.DataFrame()
    if not controls.empty:
        label = unique_text(controls, "label") or "no adapter"
        references.append((controls, q.column, f"control: {label}"))
    lines = []
    for table, column, text in references:
        table = table[table[column].notna()] if column in table else table.iloc[0:0]
        if table.empty:
            continue
        line = table.groupby(["model", "task"])[column].median().reset_index()
        line["y"], line["text"] = line[column] * q.scale, text
        lines.append(line[["model", "task", "y", "text"]])
    return pd.concat(lines, ignore_index=True) if lines else pd.DataFrame(columns=["model", "task", "y", "text"])


# ---- drawing ---------------------------------------------------------------------------------------

def series_colours(keys) -> dict:
    keys = set(keys)  # a Series' `in` would test its index
    palette = sns.color_palette("colorblind", 10)
    ordered = [k for k in FAMILY_ORDER if k in keys] + sorted(k for k in keys if k not in FAMILY_ORDER)
    fixed = {k: FAMILY_ORDER.index(k) for k in FAMILY_ORDER}
    free = iter(i for i in range(10) if i not in fixed.values())
    return {k: palette[fixed[k] if k in fixed else next(free, 9) % 10] for k in ordered}


def new_figure(panels: int = 1, height: float = 2.1, width: float = COLUMN_WIDTH_IN):
    """A row of panels; `height` is the axes' share, to which `finish` adds the caption and legend."""
    fig, axes = plt.subplots(1, panels, figsize=(width * panels, height), layout="constrained", squeeze=False)
    return fig, list(axes[0])


def finish(fig, axes, title: str, caption_lines: list[str], out_dir, name: str) -> list[Path]:
    """Legend under the axes, title and caption above, then PNG and PDF."""
    handles, labels = {}, []
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in handles:
                handles[label] = handle
                labels.append(label)
    ncol = 2 if fig.get_figwidth() > 5 and len(labels) > 3 else 1
    if handles:
        fig.legend([handles[k] for k in labels], labels, loc="outside lower center", ncol=ncol, frameon=False)
    width_chars = int(68 * fig.get_figwidth() / COLUMN_WIDTH_IN)
    caption = "\n".join(textwrap.fill(line, width_chars) for line in caption_lines if line)
    text = f"{title}\n{caption}" if caption else title
    fig.suptitle(text, fontsize=STYLE["figure.titlesize"])
    # The axes keep their height: the figure grows by the title's and the legend's lines.
    legend_rows = math.ceil(len(labels) / ncol)
    fig.set_figheight(fig.get_figheight() + LINE_IN * (text.count("\n") + 1 + legend_rows))
    return save(fig, out_dir, name)


def save(fig, out_dir, name: str) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    # no creation date or software version in the files: the same tables redraw the same bytes
    metadata = {"png": {"Software": None}, "pdf": {"CreationDate": None, "Producer": None, "Creator": None}}
    for path in paths:
        fig.savefig(path, bbox_inches="tight", metadata=metadata[path.suffix[1:]])
    plt.close(fig)
    return paths


def styled(draw):
    """Runs a figure function under the project's style: seaborn whitegrid, colour-blind palette, small fonts."""
    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        with sns.axes_style("whitegrid"), sns.color_palette("colorblind"), plt.rc_context(STYLE):
            return draw(*args, **kwargs)
    return wrapper


def draw_series(ax, points: pd.DataFrame, colour, label: str, marker: str, from_paper: bool) -> None:
    points = points.sort_values("x")
    style = dict(color=colour, marker=marker, markersize=4, linewidth=1.2, label=label)
    if from_paper:
        style.update(linestyle="--", markerfacecolor="none", markeredgewidth=1.0)
    ax.errorbar(points["x"], points["y"], yerr=error_bars(points), capsize=2, elinewidth=0.8, **style)
    if not from_paper and (points["n"] > 1).all():
        ax.fill_between(points["x"], points["lo"], points["hi"], color=colour, alpha=0.2, linewidth=0)


def draw_ours(ax, points: pd.DataFrame, colours: dict, lines: pd.DataFrame) -> None:
    combos = list(points.groupby(["model", "task"], dropna=False).groups)
    for (model, task, series), group in points.groupby(["model", "task", "series"], dropna=False):
        marker = OURS_MARKERS[combos.index((model, task)) % len(OURS_MARKERS)]
        draw_series(ax, group, colours[series], f"ours · {model} / {task} · {series}", marker, False)
    styles = [":", "-.", (0, (1, 3))]
    for i, (_, line) in enumerate(lines.iterrows()):
        ax.axhline(line["y"], color="0.35", linestyle=styles[i % len(styles)], linewidth=1,
                   label=f"{line['text']} · {line['model']} / {line['task']}")


def draw_paper_series(ax, table: pd.DataFrame, colours: dict) -> None:
    for (model, task, series, key), group in table.groupby(["model", "task", "series", "colour_key"]):
        draw_series(ax, group, colours[key], f"paper · {model} / {task} · {series}", "s", True)


def log_params_axis(ax, label: str) -> None:
    """Log x with plain labels (20k, 1M): ticks at 1, 2, 5 x 10^k over a narrow range, decades otherwise."""
    ax.set_xscale("log")
    low, high = ax.get_xlim()
    subs = (1.0, 2.0, 5.0) if math.log10(high / low) <= 2.5 else (1.0,)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(label)


def log2_axis(ax, values, label: str) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(set(values)))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel(label)


def quality_figure(ours, lines, paper, q: Quality, axis, title: str, captions: list[str], out_dir, name: str):
    """Ours (with the untrained reference `lines`) and the paper's series on one axis when they share the
    quality metric, else side by side."""
    paper_metric = set(paper["metric"]) if paper is not None else set()
    separate = ours is not None and paper is not None and q.metric not in paper_metric
    fig, axes = new_figure(2 if separate else 1)
    keys = list(ours["series"]) if ours is not None else []
    keys += list(paper["colour_key"]) if paper is not None else []
    colours = series_colours(keys)
    if ours is not None:
        draw_ours(axes[0], ours, colours, lines)
        axes[0].set_ylabel(q.axis_label)
    if paper is not None:
        paper_ax = axes[-1]
        draw_paper_series(paper_ax, paper, colours)
        if ours is None or separate:
            metric = next(iter(paper_metric))
            paper_ax.set_ylabel(f"{METRIC_NAMES.get(metric, metric)} × 100")
    for ax in axes:
        axis(ax)
    if separate:
        axes[0].set_title("ours")
        axes[1].set_title("paper (its own metric: not on the same axis)")
    return finish(fig, axes, title, captions, out_dir, name)


def paper_points(paper: pd.DataFrame | None, x_column: str, figure: str) -> pd.DataFrame | None:
    if paper is None:
        return None
    require(paper, ["model", "task", "metric", "series", "adapter", x_column, "value"], figure)
    table = paper.copy()
    table["x"], table["y"] = table[x_column], table["value"]
    labels = table["label"] if "label" in table else pd.Series("", index=table.index)
    table["colour_key"] = [family(a, lab) for a, lab in zip(table["adapter"], labels.fillna(""))]
    return table


def our_points(results, q: Quality, figure: str, x_metric=None, x_column=None, series=family):
    """Per configuration points for a quality figure, the untrained reference lines, and the caption lines
    that describe them."""
    require(results, RESULT_COLUMNS + ([x_column] if x_column else []), figure)
    table = trial_quality(results, q, x_metric=x_metric, x_column=x_column)
    table, n_lrs = keep_best_lr(table, q.higher_is_better)
    points = summarise_seeds(table, q.bounds)
    points["series"] = [series(row) for _, row in points.iterrows()]
    captions = [describe_ours(table), describe_spread(points)]
    if n_lrs > 1:
        captions.append(f"each point: the best of {n_lrs} learning rates (mean over seeds)")
    return points, baselines(results, q), captions


# ---- 1. quality against trainable parameters ------------------------------------------------------

@styled
def quality_vs_params(results: pd.DataFrame | None = None, paper: pd.DataFrame | None = None, *, out_dir,
                      quality: str = "metric", metric: str | None = None, params_metric: str = "adapter_params",
                      name: str | None = None) -> list[Path]:
    """The "MoRe vs LoRA" figure: final quality against trainable parameters (log x), one line per adapter
    family and label. `paper`: `harness.paper.more_vs_lora()` or None. `quality`: "metric" or "loss"."""
    figure = "quality_vs_params"
    q, captions = start_quality_figure(figure, results, paper, quality, metric)
    ours, lines = None, None
    if results is not None:
        if params_metric not in set(results.get("metric", [])) and params_metric == "adapter_params":
            params_metric = "trainable_params"  # older tables: no separate adapter count
        ours, lines, ours_captions = our_points(results, q, figure, x_metric=params_metric,
                                                series=lambda row: family(row["adapter"], row.get("label")))
        captions += ours_captions
    paper_table = paper_points(paper, "adapter_params", figure)
    if paper_table is not None:
        captions.append(describe_paper(paper_table) + "; its \"M\" read as 2^20")
    label = ("adapter parameters (count; task head excluded)" if params_metric == "adapter_params"
             else "trainable parameters (count)")
    return quality_figure(ours, lines, paper_table, q, lambda ax: log_params_axis(ax, label),
                          "Quality against trainable parameters", captions, out_dir,
                          name or f"{figure}_{q.metric}")


def start_quality_figure(figure: str, results, paper, quality: str, metric: str | None) -> tuple[Quality, list[str]]:
    """The quality axis of a figure that draws ours, the paper's, or both; and its first caption line."""
    if results is None and paper is None:
        raise NothingToDraw(f"{figure}: neither our results nor the paper's table")
    q = figure_quality(results, paper, quality, metric)
    return q, [q.subtitle]


def figure_quality(results, paper, quality: str, metric: str | None) -> Quality:
    """Our quality axis; with the paper's table alone, the paper's own metric."""
    if results is not None:
        return quality_axis(results, quality, metric)
    require(paper, ["metric"], "paper table")
    return quality_axis(None, "metric", str(paper["metric"].iloc[0]))


# ---- 2. quality against the number of blocks -----------------------------------------------------

@styled
def quality_vs_nblocks(results: pd.DataFrame | None = None, paper: pd.DataFrame | None = None, *, out_dir,
                       quality: str = "metric", metric: str | None = None, name: str | None = None) -> list[Path]:
    """"Changing the number of blocks": final quality against nblocks (log2 x), MoRe trials only, one line
    per label and blk_r. `paper`: `harness.paper.nblocks()` or None."""
    figure = "quality_vs_nblocks"
    q, captions = start_quality_figure(figure, results, paper, quality, metric)
    ours, lines = None, None
    if results is not None:
        require(results, RESULT_COLUMNS + ["nblocks"], figure)
        more_only = results[results["adapter"] == "more"]
        if more_only.empty:
            raise NothingToDraw(f"{figure}: no MoRe trials")
        ours, lines, ours_captions = our_points(more_only, q, figure, x_column="nblocks", series=_blocks_series)
        captions += ours_captions
    paper_table = paper_points(paper, "nblocks", figure)
    if paper_table is not None:
        captions.append(describe_paper(paper_table))
    values = list(ours["x"]) if ours is not None else []
    values += list(paper_table["x"]) if paper_table is not None else []
    return quality_figure(ours, lines, paper_table, q, lambda ax: log2_axis(ax, values, "number of blocks (nblocks)"),
                          "Quality against the number of blocks", captions, out_dir, name or f"{figure}_{q.metric}")


def _blocks_series(row) -> str:
    series = family(row["adapter"], row.get("label"))
    return f"{series} blk_r={fmt(row['blk_r'])}" if "blk_r" in row and pd.notna(row["blk_r"]) else series


# ---- 3. cost panels --------------------------------------------------------------------------------

# kind -> candidates in order of preference: (metric, axis label, scale to the axis unit).
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


def cost_metric(results: pd.DataFrame, kind: str) -> tuple[str, str, float]:
    """The first candidate metric of a cost kind that has a measured (non-NaN) value."""
    if kind not in COSTS:
        raise ValueError(f"cost must be one of {', '.join(COSTS)}, got {kind!r}")
    for metric, label, scale in COSTS[kind]:
        if results.loc[results["metric"] == metric, "value"].notna().any():
            return metric, label, scale
    names = ", ".join(m for m, _, _ in COSTS[kind])
    raise NothingToDraw(f"no measured value of {names} in the results")


@styled
def cost_panels(results: pd.DataFrame, *, out_dir, kinds=("params", "flops", "memory", "time"),
                name: str = "cost") -> list[Path]:
    """One figure per cost kind (trainable parameters, FLOPs, peak memory, step time with its IQR), bars per
    adapter configuration, faceted by model (rows) and sequence length (columns)."""
    require(results, RESULT_COLUMNS, "cost_panels")
    results = ok_only(results)
    paths, skipped = [], []
    for kind in kinds:
        try:
            paths += cost_figure(results, kind, out_dir, f"{name}_{kind}")
        except NothingToDraw as err:
            skipped.append(f"{kind} ({err})")
    if skipped:
        print(f"cost_panels: skipped {'; '.join(skipped)}")
    if not paths:
        raise NothingToDraw("cost_panels: no cost was measured")
    return paths


def cost_figure(results: pd.DataFrame, kind: str, out_dir, name: str) -> list[Path]:
    metric, label, scale = cost_metric(results, kind)
    table = per_trial(results, [metric, f"{metric}_iqr"])
    table["config"] = [config_label(row) for _, row in table.iterrows()]
    table["family"] = [family(row["adapter"], row.get("label")) for _, row in table.iterrows()]
    table["seq_len"] = table["seq_len"] if "seq_len" in table else np.nan
    models = sorted(table["model"].dropna().unique(), key=str)
    seq_lens = sorted(table["seq_len"].dropna().unique()) or [np.nan]
    configs = sorted(table["config"].unique(), key=lambda c: (c.split(" ")[0], len(c), c))
    colours = series_colours(table["family"])
    height = 0.55 + 0.16 * len(configs)
    fig, axes = plt.subplots(len(models), len(seq_lens), figsize=(min(7.0, 1.3 + 2.1 * len(seq_lens)),
                             0.3 + height * len(models)), layout="constrained", squeeze=False, sharey=True)
    for i, model in enumerate(models):
        for j, seq_len in enumerate(seq_lens):
            facet = table[(table["model"] == model) & ((table["seq_len"] == seq_len) | pd.isna(seq_len))]
            draw_cost_facet(axes[i][j], facet, metric, scale, configs, colours, results)
            title = f"{model}" + (f" · seq_len {fmt(seq_len)}" if pd.notna(seq_len) else "")
            axes[i][j].set_title(title)
    fig.supxlabel(label, fontsize=STYLE["axes.labelsize"])  # one label: per-facet ones collide
    axes[0][0].invert_yaxis()  # shared by every facet: the first configuration on top
    captions = [describe_ours(results), "k = nblocks, b = blk_sz, r = blk_r (MoRe) or rank (LoRA)"]
    if f"{metric}_iqr" in table and table[f"{metric}_iqr"].notna().any():
        captions.append("bars: median; whiskers: interquartile range of the repeats")
    if metric == "time_step_s" and notes_of(results, metric).startswith("mean"):
        captions.append("training trials: mean step time over the run")
    return finish(fig, list(axes.flat), f"Cost: {label.split(' (')[0]}", captions, out_dir, name)


def draw_cost_facet(ax, facet, metric, scale, configs, colours, results) -> None:
    values = facet.groupby("config")[metric].median().reindex(configs) * scale
    iqr = facet.groupby("config")[f"{metric}_iqr"].median().reindex(configs) * scale
    families = facet.groupby("config")["family"].first().reindex(configs)
    positions = np.arange(len(configs))
    bar_colours = [colours.get(f, "0.6") for f in families]
    ax.barh(positions, values.fillna(0), xerr=iqr.fillna(0) if iqr.notna().any() else None,
            color=bar_colours, error_kw={"elinewidth": 0.8, "capsize": 1.5})
    ax.set_yticks(positions, configs)
    ax.xaxis.set_major_locator(MaxNLocator(5))
    if scale == 1.0:
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    if values.isna().all():
        model_rows = results[results["model"].isin(facet["model"].unique())]
        note = notes_of(model_rows, metric) or "not measured"
        ax.text(0.5, 0.5, textwrap.fill(note, 28), transform=ax.transAxes, ha="center", va="center", fontsize=6)
        ax.set_xticks([])


# ---- 4. Pareto front -------------------------------------------------------------------------------

def pareto_mask(cost: np.ndarray, quality: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """True for the points no other point beats on both cost (lower) and quality."""
    quality = quality if higher_is_better else -quality
    keep = np.ones(len(cost), dtype=bool)
    for i in range(len(cost)):
        no_worse = (cost <= cost[i]) & (quality >= quality[i])
        better = (cost < cost[i]) | (quality > quality[i])
        keep[i] = not (no_worse & better).any()
    return keep


@styled
def pareto_front(results: pd.DataFrame, *, out_dir, cost: str = "memory", quality: str = "metric",
                 metric: str | None = None, name: str | None = None) -> list[Path]:
    """Final quality against a cost ("memory", "time" or "params"), one panel per model and task; the
    configurations no other beats on both are joined as the Pareto front."""
    figure = "pareto_front"
    require(results, RESULT_COLUMNS, figure)
    q = quality_axis(results, quality, metric)
    cost_kind = "adapter_params" if cost == "params" else cost
    if cost_kind not in ("adapter_params", "memory", "time"):
        raise ValueError(f"{figure}: cost must be memory, time or params, got {cost!r}")
    cost_name, cost_label, scale = cost_metric(ok_only(results), cost_kind)
    points, _lines, captions = our_points(results, q, figure, x_metric=cost_name,
                                  series=lambda row: family(row["adapter"], row.get("label")))
    points["x"] = points["x"] * scale
    panels = list(points.groupby(["model", "task"], dropna=False))
    fig, axes = new_figure(len(panels))
    colours = series_colours(points["series"])
    for ax, ((model, task), group) in zip(axes, panels):
        draw_pareto_panel(ax, group, colours, q)
        ax.set_title(f"{model} / {task}")
        ax.set_xlabel(cost_label)
        ax.set_ylabel(q.axis_label)
        if cost_kind == "adapter_params":
            log_params_axis(ax, cost_label)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(4))  # a narrow range has long tick labels
    captions = [q.subtitle] + captions
    return finish(fig, axes, f"Pareto front: quality against {cost_label.split(' (')[0]}", captions, out_dir,
                  name or f"pareto_{cost}_{q.metric}")


def draw_pareto_panel(ax, points: pd.DataFrame, colours: dict, q: Quality) -> None:
    for series, group in points.groupby("series"):
        ax.errorbar(group["x"], group["y"], yerr=error_bars(group), fmt="o", color=colours[series],
                    markersize=4, elinewidth=0.8, capsize=2, label=series)
    front = points[pareto_mask(points["x"].to_numpy(), points["y"].to_numpy(), q.higher_is_better)]
    front = front.sort_values("x")
    ax.step(front["x"], front["y"], where="post", color="0.2", linestyle="--", linewidth=1, label="Pareto front")
    for i, (_, row) in enumerate(front.iterrows()):
        ax.annotate(config_label(row), (row["x"], row["y"]), xytext=(3, 4 if i % 2 == 0 else -9),
                    textcoords="offset points", fontsize=5)


# ---- 5. the commonsense table ----------------------------------------------------------------------

@styled
def commonsense_heatmap(paper: pd.DataFrame, results: pd.DataFrame | None = None, *, out_dir,
                        name: str = "commonsense") -> list[Path]:
    """The paper's Table 1 (accuracy %, one row per method) as a heatmap, with our commonsense results
    (one row per model and adapter configuration, mean over seeds) under it."""
    require(paper, ["method", "task", "accuracy"], "commonsense_heatmap (paper table)")
    columns = paper_tables.COMMONSENSE_TASKS
    paper_rows = paper.assign(row=lambda t: "paper · " + t["method"] + (" · " + t["params"] if "params" in t else ""))
    grid = paper_rows.pivot_table(index="row", columns="task", values="accuracy", sort=False).reindex(columns=columns)
    captions = [f"paper: Table 1 of {paper_tables.SOURCE}, model {unique_text(paper, 'model')}"]
    if results is not None:
        ours = our_commonsense_rows(results)
        if ours.empty:
            captions.append("ours: no commonsense results yet")
        else:
            grid = pd.concat([grid, ours.reindex(columns=columns)])
            captions += [describe_ours(ok_only(results)), "ours: Avg left blank unless all eight tasks ran"]
    fig, axes = new_figure(1, height=0.6 + 0.22 * len(grid), width=7.0)
    sns.heatmap(grid, ax=axes[0], annot=True, fmt=".1f", cmap="cividis", mask=grid.isna(), linewidths=0.5,
                cbar_kws={"label": "accuracy (%)"}, annot_kws={"fontsize": 6})
    paper_count = paper_rows["row"].nunique()
    if len(grid) > paper_count:
        axes[0].axhline(paper_count, color="white", linewidth=2.5)
    axes[0].set_xlabel("task")
    axes[0].set_ylabel("")
    axes[0].grid(False)
    axes[0].tick_params(axis="x", labelrotation=30)
    plt.setp(axes[0].get_xticklabels(), ha="right", rotation_mode="anchor")
    return finish(fig, axes, "Commonsense reasoning: accuracy (%)", captions, out_dir, name)


def our_commonsense_rows(results: pd.DataFrame) -> pd.DataFrame:
    require(results, RESULT_COLUMNS, "commonsense_heatmap (our results)")
    table = per_trial(ok_only(results), ["eval_accuracy"])
    table = table[table["task"].isin(COMMONSENSE_COLUMNS) & table["eval_accuracy"].notna()].copy()
    if table.empty:
        return pd.DataFrame()
    table["column"] = table["task"].map(COMMONSENSE_COLUMNS)
    steps = table["steps"].map(lambda s: f" · {fmt(s)} steps") if "steps" in table else ""
    labels = [config_label(r) for _, r in table.iterrows()]
    table["row"] = "ours · " + table["model"].astype(str) + " · " + labels + steps
    grid = table.pivot_table(index="row", columns="column", values="eval_accuracy", aggfunc="mean") * 100
    eight = [c for c in paper_tables.COMMONSENSE_TASKS if c != "Avg"]
    if set(eight) <= set(grid.columns):
        grid["Avg"] = grid[eight].mean(axis=1).where(grid[eight].notna().all(axis=1))
    return grid


# ---- a study's figures, the paper's figures, the command line ---------------------------------------

def load_or_none(study: str, results_dir=None) -> pd.DataFrame | None:
    try:
        results = ok_only(load(study, results_dir))
    except FileNotFoundError:
        return None
    return results if not results.empty else None


def attempt(figure, *args, **kwargs) -> list[Path]:
    """Draws one figure; a figure the tables cannot support is skipped with a printed reason."""
    try:
        return figure(*args, **kwargs)
    except (MissingColumns, NothingToDraw) as err:
        print(f"skipped {kwargs.get('name') or figure.__name__}: {err}")
        return []


def figures_that_apply(results: pd.DataFrame) -> list[str]:
    trained = results["metric"].astype(str).str.startswith("eval_").any()
    kinds = ["quality_vs_params", "pareto"] if trained else []
    if trained and "nblocks" in results and results.loc[results["adapter"] == "more", "nblocks"].nunique() > 1:
        kinds.append("quality_vs_nblocks")
    if trained and "task" in results and results["task"].isin(COMMONSENSE_COLUMNS).any():
        kinds.append("commonsense")
    return kinds + ["cost"]


def draw_study(study: str, results_dir=None, out_dir=None) -> list[Path]:
    """Every figure that applies to a study, under results/<study>/figures/ (or `out_dir`)."""
    results = load_or_none(study, results_dir)
    if results is None:
        print(f"{study}: no results under {Path(results_dir or RESULTS_DIR) / study}; nothing to draw. "
              f"Run `python -m harness run {study}` first.")
        return []
    out_dir = Path(out_dir or Path(results_dir or RESULTS_DIR) / study / "figures")
    paths = []
    for kind in FIGURES_BY_STUDY.get(study) or figures_that_apply(results):
        paths += DRAWERS[kind](results, out_dir)
    print(f"{study}: {len(paths) // 2} figures in {out_dir}")
    return paths


def _draw_quality_vs_params(results, out_dir, paper=None):
    paper = paper_tables.more_vs_lora() if paper is None else paper
    return [p for q in ("metric", "loss") for p in
            attempt(quality_vs_params, results, paper, out_dir=out_dir, quality=q)]


def _draw_quality_vs_nblocks(results, out_dir, paper=None):
    paper = paper_tables.nblocks() if paper is None else paper
    return [p for q in ("metric", "loss") for p in
            attempt(quality_vs_nblocks, results, paper, out_dir=out_dir, quality=q)]


def _draw_pareto(results, out_dir):
    return [p for q in ("metric", "loss") for cost in ("memory", "time", "params") for p in
            attempt(pareto_front, results, out_dir=out_dir, cost=cost, quality=q)]


DRAWERS = {
    "quality_vs_params": _draw_quality_vs_params,
    "quality_vs_nblocks": _draw_quality_vs_nblocks,
    "pareto": _draw_pareto,
    "cost": lambda results, out_dir: attempt(cost_panels, results, out_dir=out_dir),
    "commonsense": lambda results, out_dir: attempt(commonsense_heatmap, paper_tables.commonsense(), results,
                                                    out_dir=out_dir),
}


def draw_paper(out_dir=None, results_dir=None) -> list[Path]:
    """The paper's figures from results/paper/, beside whatever of our results exist (rank_ablation,
    block_ablation, commonsense). Default folder: results/paper/figures/."""
    out_dir = Path(out_dir or paper_tables.PAPER_DIR / "figures")
    rank, blocks = load_or_none("rank_ablation", results_dir), load_or_none("block_ablation", results_dir)
    paths = []
    for ours, draw, table, name in ((rank, quality_vs_params, paper_tables.more_vs_lora(), "more_vs_lora"),
                                    (blocks, quality_vs_nblocks, paper_tables.nblocks(), "nblocks")):
        # The paper's metric, with ours beside it when we have it; then ours as held-out loss beside the paper.
        drawn = attempt(draw, ours, table, out_dir=out_dir, name=f"{name}_metric") if ours is not None else []
        paths += drawn or draw(None, table, out_dir=out_dir, name=f"{name}_metric")
        if ours is not None:
            paths += attempt(draw, ours, table, out_dir=out_dir, quality="loss", name=f"{name}_loss")
    paths += commonsense_heatmap(paper_tables.commonsense(), load_or_none("commonsense", results_dir),
                                 out_dir=out_dir)
    print(f"paper: {len(paths) // 2} figures in {out_dir}")
    return paths


def studies_with_results(results_dir=None) -> list[str]:
    root = Path(results_dir or RESULTS_DIR)
    return sorted(p.parent.name for p in root.glob("*/trials.csv"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.figures", description=__doc__.split("\n\n")[0])
    parser.add_argument("studies", nargs="*", help="studies to draw (default: every study with results)")
    parser.add_argument("--paper", action="store_true", help="draw the paper's figures beside ours, "
                        "into results/paper/figures/ (alone, when no study is named)")
    parser.add_argument("--results-dir", default=None, help="read results from here instead of results/")
    args = parser.parse_args(argv)
    studies = args.studies or ([] if args.paper else studies_with_results(args.results_dir))
    if not studies and not args.paper:
        print(f"No study has results under {args.results_dir or RESULTS_DIR}; nothing to draw.")
    for study in studies:
        draw_study(study, args.results_dir)
    if args.paper:
        draw_paper(results_dir=args.results_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
