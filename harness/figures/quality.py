"""What the two quality figures share: our series (this machine's solid lines with filled markers and 95% bands
over seeds, the reference machine's beside them dotted and fainter), the reference lines, the paper's series
(dashed, hollow markers), and one axis for both when they share the quality metric, else two panels side by side."""
from __future__ import annotations

import pandas as pd

from .style import OURS_MARKERS, PAPER_LOOK, SOURCE_LOOKS, finish, new_figure, series_colours
from .tables import METRIC_NAMES, SOURCE, Quality, error_bars, sources

SHORT_NAME = 12  # characters: a one-point series' name up to this long is written upright beside its neighbours


def draw_series(ax, points: pd.DataFrame, colour, label: str, marker: str, look: dict, band: bool) -> None:
    """One series: a line with markers and error bars in `look` (style.SOURCE_LOOKS or PAPER_LOOK), and its 95%
    band when `band` and every point has several seeds."""
    points = points.sort_values("x")
    style = dict(color=colour, marker=marker, markersize=4, linewidth=1.2, label=label, **look)
    ax.errorbar(points["x"], points["y"], yerr=error_bars(points), capsize=2, elinewidth=0.8, **style)
    if band and (points["n"] > 1).all():
        ax.fill_between(points["x"], points["lo"], points["hi"], color=colour, alpha=0.2 * look.get("alpha", 1),
                        linewidth=0)


def draw_ours(ax, points: pd.DataFrame, colours: dict, lines: pd.DataFrame) -> list:
    """Each source's series (this machine's, then the reference machine's beside them) and reference lines;
    returns the first source's one-point series, (name, point), to be named once the axis is set up."""
    combos = list(points.groupby(["model", "task"], dropna=False).groups)
    order = list(dict.fromkeys(sources(points)))
    lone = []
    for (source, model, task, series), group in points.groupby([sources(points), "model", "task", "series"],
                                                               dropna=False, sort=False):
        marker = OURS_MARKERS[combos.index((model, task)) % len(OURS_MARKERS)]
        draw_series(ax, group, colours[series], f"{source} · {model} / {task} · {series}", marker,
                    SOURCE_LOOKS[order.index(source)], band=True)
        if len(group) == 1 and source == order[0]:
            lone.append((series, group.iloc[0]))
    styles = [":", "-.", (0, (5, 1, 1, 1, 1, 1))]  # dotted, dash-dot, dash-dot-dot: apart in the legend
    for i, (_, line) in enumerate(lines.iterrows()):
        alpha = SOURCE_LOOKS[order.index(line[SOURCE])].get("alpha", 1) if line[SOURCE] in order else 1
        label = " · ".join(filter(None, [line["text"], line[SOURCE], f"{line['model']} / {line['task']}"]))
        ax.axhline(line["y"], color="0.35", linestyle=styles[i % len(styles)], linewidth=1, alpha=alpha, label=label)
    return lone


def name_lone_points(ax, lone: list, colours: dict) -> None:
    """Names each one-point series above its error bar: upright when the name is short (neighbours side by side
    stay apart), else level. The axis gains the headroom the names need, measured as drawn, so they take no
    space from the panel's layout."""
    if not lone:
        return
    ax.autoscale_view()
    low, high = ax.get_ylim()
    renderer = ax.figure.canvas.get_renderer()
    axes_height = ax.get_window_extent(renderer).height
    for series, point in lone:
        where = ax.transAxes.inverted().transform(ax.transData.transform((point["x"], point["y"])))[0]
        upright = len(series) <= SHORT_NAME
        align = "center" if upright or 0.2 <= where <= 0.8 else "left" if where < 0.2 else "right"
        top = point["hi"] if pd.notna(point["hi"]) else point["y"]
        text = ax.annotate(series, (point["x"], top), xytext=(0, 3), textcoords="offset points", ha=align,
                           va="bottom", rotation=90 if upright else 0, fontsize=5, color=colours[series])
        text.set_in_layout(False)
        room = min(0.5, (text.get_window_extent(renderer).height + 6) / axes_height)  # name and gap, axes shares
        high = max(high, (top - room * low) / (1 - room))  # the name's top inside the axes
    ax.set_ylim(low, high)


def draw_paper_series(ax, table: pd.DataFrame, colours: dict) -> None:
    for (model, task, series, key), group in table.groupby(["model", "task", "series", "colour_key"]):
        draw_series(ax, group, colours[key], f"paper · {model} / {task} · {series}", "s", PAPER_LOOK, band=False)


def quality_figure(ours, lines, paper, q: Quality, axis, title: str, captions: list[str], out_dir, name: str):
    """Ours (with the reference `lines`) and the paper's series on one axis when they share the quality
    metric, else side by side. `axis(ax)` sets up the x axis of each panel."""
    paper_metric = set(paper["metric"]) if paper is not None else set()
    separate = ours is not None and paper is not None and q.metric not in paper_metric
    fig, axes = new_figure(2 if separate else 1)
    keys = list(ours["series"]) if ours is not None else []
    keys += list(paper["colour_key"]) if paper is not None else []
    colours = series_colours(keys)
    lone = []
    if ours is not None:
        lone = draw_ours(axes[0], ours, colours, lines)
        axes[0].set_ylabel(q.axis_label)
    if paper is not None:
        paper_ax = axes[-1]
        draw_paper_series(paper_ax, paper, colours)
        if ours is None or separate:
            metric = next(iter(paper_metric))
            paper_ax.set_ylabel(f"{METRIC_NAMES.get(metric, metric)} × 100")
    for ax in axes:
        axis(ax)
    name_lone_points(axes[0], lone, colours)
    if separate:
        axes[0].set_title("ours")
        axes[1].set_title("paper (its own metric: not on the same axis)")
    return finish(fig, axes, title, captions, out_dir, name)
