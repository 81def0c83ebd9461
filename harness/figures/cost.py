"""Cost panels: one figure per cost (trainable parameters, FLOPs, peak memory, step time), bars per adapter
configuration and source (this machine's, the reference machine's hatched beside them), faceted by model (rows)
and sequence length (columns)."""
from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import EngFormatter, MaxNLocator

from .style import SOURCE_BAR_LOOKS, STYLE, finish, series_colours, styled
from .tables import (RESULT_COLUMNS, NothingToDraw, config_label, cost_metric, describe_ours, describe_sharing, fmt,
                     is_training_study, notes_of, ok_only, per_trial, require, row_series, sources, timed_in_turn,
                     unique_text)


@styled
def cost_panels(results: pd.DataFrame, *, out_dir, costs=("params", "flops", "memory", "time"),
                name: str = "cost") -> list[Path]:
    """One figure per cost (`harness.figures.tables.COSTS`) that was measured, named `<name>_<cost>`; the
    costs that were not are skipped with a printed reason."""
    require(results, RESULT_COLUMNS, "cost_panels")
    results = ok_only(results)
    paths, skipped = [], []
    for cost in costs:
        try:
            paths += cost_figure(results, cost, out_dir, f"{name}_{cost}")
        except NothingToDraw as err:
            skipped.append(f"{cost} ({err})")
    if skipped:
        print(f"cost_panels: skipped {'; '.join(skipped)}")
    if not paths:
        raise NothingToDraw("cost_panels: no cost was measured")
    return paths


def cost_figure(results: pd.DataFrame, cost: str, out_dir, name: str) -> list[Path]:
    metric, label, scale = cost_metric(results, cost)
    in_turn = timed_in_turn(results, [metric, f"{metric}_iqr"]) if metric == "time_step_s" else None
    table = per_trial(results, [metric, f"{metric}_iqr"]) if in_turn is None else in_turn
    table["config"] = [config_label(row) for _, row in table.iterrows()]
    table["series"] = [row_series(row) for _, row in table.iterrows()]
    table["seq_len"] = table["seq_len"] if "seq_len" in table else np.nan
    models = sorted(table["model"].dropna().unique(), key=str)
    seq_lens = sorted(table["seq_len"].dropna().unique()) or [np.nan]
    configs = sorted(table["config"].unique(), key=lambda c: (c.split(" ")[0], len(c), c))
    colours = series_colours(table["series"])
    order = list(dict.fromkeys(sources(table)))
    height = 0.55 + (0.16 + 0.08 * (len(order) - 1)) * len(configs)
    fig, axes = plt.subplots(len(models), len(seq_lens), figsize=(min(7.0, 1.3 + 2.1 * len(seq_lens)),
                             0.3 + height * len(models)), layout="constrained", squeeze=False, sharey=True)
    for i, model in enumerate(models):
        for j, seq_len in enumerate(seq_lens):
            facet = table[(table["model"] == model) & ((table["seq_len"] == seq_len) | pd.isna(seq_len))]
            draw_cost_facet(axes[i][j], facet, metric, scale, configs, colours, results, order)
            title = f"{model}" + (f" · seq_len {fmt(seq_len)}" if pd.notna(seq_len) else "")
            axes[i][j].set_title(title)
    fig.supxlabel(label, fontsize=STYLE["axes.labelsize"])  # one label: per-facet ones collide
    axes[0][0].invert_yaxis()  # shared by every facet: the first configuration on top
    captions = [*describe_ours(results), "k = nblocks, b = blk_sz, r = blk_r (MoRe) or rank (LoRA)"]
    if len(order) > 1:  # a caption line, not a legend: a legend under the facets would cover their shared x label
        captions.append(f"bars: {order[0]} solid, {order[1]} hatched and fainter beneath")
    if f"{metric}_iqr" in table and table[f"{metric}_iqr"].notna().any():
        captions.append("bars: median; whiskers: interquartile range of the repeats")
    if metric.startswith("flops") and is_training_study(results):
        captions.append(describe_counting(table))
    if in_turn is not None:
        captions.append(describe_in_turn(table, results))
    elif metric == "time_step_s":
        captions.append(describe_sharing(results))
        if notes_of(results, metric).startswith("mean"):
            captions.append("training trials: mean step time over the run")
    return finish(fig, list(axes.flat), f"Cost: {label.split(' (')[0]}", captions, out_dir, name)


def draw_cost_facet(ax, facet, metric, scale, configs, colours, results, order) -> None:
    """A bar per configuration and source (in `order`), side by side."""
    series = facet.groupby("config")["series"].first().reindex(configs)
    bar_colours = [colours.get(s, "0.6") for s in series]
    height = 0.8 / len(order)
    for i, source in enumerate(order):
        part = facet[sources(facet) == source]
        values = part.groupby("config")[metric].median().reindex(configs) * scale
        iqr = part.groupby("config")[f"{metric}_iqr"].median().reindex(configs) * scale
        positions = np.arange(len(configs)) + (i - (len(order) - 1) / 2) * height
        ax.barh(positions, values.fillna(0), height=height, xerr=iqr.fillna(0) if iqr.notna().any() else None,
                color=bar_colours, error_kw={"elinewidth": 0.8, "capsize": 1.5}, **SOURCE_BAR_LOOKS[i])
    ax.set_yticks(np.arange(len(configs)), configs)
    ax.xaxis.set_major_locator(MaxNLocator(5))
    if scale == 1.0:
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    if facet[metric].isna().all():
        model_rows = results[results["model"].isin(facet["model"].unique())]
        note = notes_of(model_rows, metric) or "not measured"
        ax.text(0.5, 0.5, textwrap.fill(note, 28), transform=ax.transAxes, ha="center", va="center", fontsize=6)
        ax.set_xticks([])


def describe_in_turn(table: pd.DataFrame, results: pd.DataFrame) -> str:
    """How the interleaved trials timed their adapters (`table`: `timed_in_turn`'s rows), and whether other trials
    shared the machine meanwhile."""
    rounds = notes_of(results[results["kind"] == "interleaved"], "time_step_s")  # "median of 10"
    return (f"time: every adapter's training step timed in turn (A, B, C, ..., A, B, C, ...) in one process, "
            f"{rounds + ' rounds, ' if rounds else ''}{step_shape(table)}, so that other work on the machine slows "
            f"all alike; {describe_sharing(results)}")


def step_shape(table: pd.DataFrame) -> str:
    """The training step a counting or interleaved trial ran: "24 sequences of 144 tokens"."""
    return f"{unique_text(table, 'batch')} sequences of {unique_text(table, 'seq_len')} tokens"


def describe_counting(table: pd.DataFrame) -> str:
    """How a training study's counting trials (harness.spec) counted: the step's shape they ran."""
    shape = step_shape(table)
    return (f"FLOPs: counted by torch's FLOP counter on one training step of each adapter, no training: {shape} "
            "(each example as many sequences as its task's scoring puts through the model, padded); FFTs count zero")
