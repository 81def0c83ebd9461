"""The "MoRe vs LoRA" figure: final quality against trainable parameters (log x), one line per series."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .quality import quality_figure
from .style import log_params_axis, styled
from .tables import describe_paper, figure_quality, our_points, paper_points


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
    paper_table = paper_points(paper, "adapter_params", figure)
    if paper_table is not None:
        captions.append(describe_paper(paper_table) + "; its \"M\" read as 2^20")
    label = ("adapter parameters (count; task head excluded)" if params_metric == "adapter_params"
             else "trainable parameters (count)")
    return quality_figure(ours, lines, paper_table, q, lambda ax: log_params_axis(ax, label),
                          "Quality against trainable parameters", captions, out_dir,
                          name or f"{figure}_{q.metric}")
