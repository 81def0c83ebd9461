"""Pareto fronts: final quality against a cost, one panel per model and task; the configurations no other
beats on both are joined as the front, one front per source (this machine's, the reference machine's)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.ticker import MaxNLocator

from .style import SOURCE_LOOKS, finish, log_params_axis, new_figure, series_colours, styled
from .tables import (RESULT_COLUMNS, Quality, by_source, config_label, cost_metric, describe_sharing, error_bars,
                     ok_only, our_points, pareto_mask, quality_axis, require)

PARETO_COSTS = {"memory": "memory", "time": "time", "params": "adapter_params"}  # the name -> the cost it plots


@styled
def pareto_front(results: pd.DataFrame, *, out_dir, cost: str = "memory", quality: str = "metric",
                 metric: str | None = None, name: str | None = None) -> list[Path]:
    """Final quality against a cost ("memory", "time" or "params"), one panel per model and task."""
    figure = "pareto_front"
    require(results, RESULT_COLUMNS, figure)
    q = quality_axis(results, quality, metric)
    if cost not in PARETO_COSTS:
        raise ValueError(f"{figure}: cost must be {', '.join(PARETO_COSTS)}, got {cost!r}")
    cost_name, cost_label, scale = cost_metric(ok_only(results), PARETO_COSTS[cost])
    points, _lines, captions = our_points(results, q, figure, x_metric=cost_name)
    points["x"] = points["x"] * scale
    panels = list(points.groupby(["model", "task"], dropna=False))
    fig, axes = new_figure(len(panels))
    colours = series_colours(points["series"])
    for ax, ((model, task), group) in zip(axes, panels):
        draw_pareto_panel(ax, group, colours, q)
        ax.set_title(f"{model} / {task}")
        ax.set_xlabel(cost_label)
        ax.set_ylabel(q.axis_label)
        if cost == "params":
            log_params_axis(ax, cost_label)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(4))  # a narrow range has long tick labels
    captions = [q.subtitle] + captions + ([describe_sharing(ok_only(results))] if cost == "time" else [])
    return finish(fig, axes, f"Pareto front: quality against {cost_label.split(' (')[0]}", captions, out_dir,
                  name or f"pareto_{cost}_{q.metric}")


def draw_pareto_panel(ax, points: pd.DataFrame, colours: dict, q: Quality) -> None:
    """Each source's points and front; the first source's front is labelled with its configurations."""
    for i, (source, part) in enumerate(by_source(points)):
        alpha = SOURCE_LOOKS[i].get("alpha", 1)
        for series, group in part.groupby("series"):
            ax.errorbar(group["x"], group["y"], yerr=error_bars(group), fmt="o", color=colours[series], alpha=alpha,
                        markerfacecolor=colours[series] if i == 0 else "none", markersize=4, elinewidth=0.8,
                        capsize=2, label=f"{source} · {series}")
        front = part[pareto_mask(part["x"].to_numpy(), part["y"].to_numpy(), q.higher_is_better)].sort_values("x")
        ax.step(front["x"], front["y"], where="post", color="0.2", linestyle="--" if i == 0 else ":", linewidth=1,
                alpha=alpha, label=f"Pareto front · {source}")
        for j, (_, row) in enumerate(front.iterrows() if i == 0 else []):
            ax.annotate(config_label(row), (row["x"], row["y"]), xytext=(3, 4 if j % 2 == 0 else -9),
                        textcoords="offset points", fontsize=5)
