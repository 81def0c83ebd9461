"""The "MoRe vs LoRA" figure: final quality against trainable parameters (log x), one line per series."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from .quality import quality_figure
from .style import log_params_axis, styled
from .tables import describe_paper, figure_quality, our_points, paper_points


# Series whose parameter counts lie within CLUSTER of each other (methods matched to one size) are drawn
# side by side, SPREAD_STEP apart on the log x axis, each named at its point: three series or more, or two
# whose points are their only ones (no line joins them to another size).
CLUSTER = 0.2
SPREAD_STEP = 0.06


def spread_shared_x(points: pd.DataFrame) -> tuple[pd.DataFrame, float]:
    """Points of three or more series at nearly one x (within CLUSTER), or of two series that have no other
    points, spread multiplicatively around the cluster's middle in order of x and name (the same offsets for
    every source), and the largest relative move (0 when nothing moved)."""
    spots = points[["x", "series"]].drop_duplicates().sort_values(["x", "series"])
    sizes = spots.groupby("series")["x"].nunique()
    clusters, current = [], []
    for spot in spots.itertuples(index=False):
        if current and spot.x > current[0].x * (1 + CLUSTER):
            clusters.append(current)
            current = []
        current.append(spot)
    clusters.append(current)
    new_x, largest = {}, 0.0
    for cluster in clusters:
        series = {spot.series for spot in cluster}
        if len(series) < 2 or (len(series) == 2 and any(sizes[name] > 1 for name in series)):
            continue
        middle = math.exp(sum(math.log(spot.x) for spot in cluster) / len(cluster))
        for i, spot in enumerate(cluster):
            new_x[spot.series, spot.x] = middle * (1 + SPREAD_STEP) ** (i - (len(cluster) - 1) / 2)
            largest = max(largest, abs(new_x[spot.series, spot.x] / spot.x - 1))
    if not new_x:
        return points, 0.0
    points = points.copy()
    points["x"] = [new_x.get((series, x), x) for series, x in zip(points["series"], points["x"])]
    return points, largest


@styled
def quality_vs_params(results: pd.DataFrame | None = None, paper: pd.DataFrame | None = None, *, out_dir,
                      quality: str = "metric", metric: str | None = None, params_metric: str = "adapter_params",
                      name: str | None = None) -> list[Path]:
    """Final quality against trainable parameters (log x), one line per adapter series and label.
    `paper`: `harness.paper.more_vs_lora()` or None. `quality`: "metric" or "loss". `params_metric`:
    "adapter_params" (the adapter alone) or "trainable_params" (adapter and task head)."""
    figure = "quality_vs_params"
    q = figure_quality(figure, results, paper, quality, metric)
    captions, ours, lines = [q.subtitle], None, None
    if results is not None:
        ours, lines, ours_captions = our_points(results, q, figure, x_metric=params_metric)
        captions += ours_captions
        ours, spread = spread_shared_x(ours)
        if spread:
            captions.append("series of nearly equal parameter counts are drawn side by side, each named, moved "
                            f"up to {spread:.0%} in x so that each shows (exact counts in the study's table)")
    paper_table = paper_points(paper, "adapter_params", figure)
    if paper_table is not None:
        captions.append(describe_paper(paper_table) + "; its \"M\" read as 2^20")
    label = ("adapter parameters (count; task head excluded)" if params_metric == "adapter_params"
             else "trainable parameters (count)")
    return quality_figure(ours, lines, paper_table, q, lambda ax: log_params_axis(ax, label),
                          "Quality against trainable parameters", captions, out_dir,
                          name or f"{figure}_{q.metric}")
