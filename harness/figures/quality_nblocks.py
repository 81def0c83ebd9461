""""Changing the number of blocks": final quality against nblocks (log2 x), MoRe trials only, with the study's
references (the head-only control, the calibrated untouched model) as lines."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .quality import quality_figure
from .style import log2_axis, styled
from .tables import (RESULT_COLUMNS, NothingToDraw, baselines, describe_paper, figure_quality, fmt, our_points,
                     paper_points, require, row_series)


@styled
def quality_vs_nblocks(results: pd.DataFrame | None = None, paper: pd.DataFrame | None = None, *, out_dir,
                       quality: str = "metric", metric: str | None = None, name: str | None = None) -> list[Path]:
    """Final quality against nblocks (log2 x), MoRe trials only, one line per label and blk_r.
    `paper`: `harness.paper.nblocks()` or None. `quality`: "metric" or "loss"."""
    figure = "quality_vs_nblocks"
    q = figure_quality(figure, results, paper, quality, metric)
    captions, ours, lines = [q.subtitle], None, None
    if results is not None:
        require(results, RESULT_COLUMNS + ["nblocks"], figure)
        more_only = results[results["adapter"] == "more"]
        if more_only.empty:
            raise NothingToDraw(f"{figure}: no MoRe trials")
        ours, _, ours_captions = our_points(more_only, q, figure, x_column="nblocks", series=blocks_series)
        lines = baselines(results, q)  # the references are trials without MoRe
        captions += ours_captions
    paper_table = paper_points(paper, "nblocks", figure)
    if paper_table is not None:
        captions.append(describe_paper(paper_table))
    values = list(ours["x"]) if ours is not None else []
    values += list(paper_table["x"]) if paper_table is not None else []
    return quality_figure(ours, lines, paper_table, q, lambda ax: log2_axis(ax, values, "number of blocks (nblocks)"),
                          "Quality against the number of blocks", captions, out_dir, name or f"{figure}_{q.metric}")


def blocks_series(row) -> str:
    """A series per label and blk_r: "MoRe blk_r=4"."""
    series = row_series(row)
    return f"{series} blk_r={fmt(row['blk_r'])}" if "blk_r" in row and pd.notna(row["blk_r"]) else series
