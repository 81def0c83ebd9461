"""What the two quality figures share: our series (solid lines, filled markers, 95% bands over seeds), the
reference lines, the paper's series (dashed, hollow markers), and one axis for both when they share the
quality metric, else two panels side by side."""
from __future__ import annotations

import pandas as pd

from .style import OURS_MARKERS, finish, new_figure, series_colours
from .tables import METRIC_NAMES, Quality, error_bars


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


def quality_figure(ours, lines, paper, q: Quality, axis, title: str, captions: list[str], out_dir, name: str):
    """Ours (with the reference `lines`) and the paper's series on one axis when they share the quality
    metric, else side by side. `axis(ax)` sets up the x axis of each panel."""
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
