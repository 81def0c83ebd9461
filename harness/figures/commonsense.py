"""The paper's commonsense table (its Table 1, accuracy %) as a heatmap, with our commonsense rows under it."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from .style import finish, new_figure, styled
from .tables import commonsense_grid


@styled
def commonsense_heatmap(paper: pd.DataFrame, results: pd.DataFrame | None = None, *, out_dir,
                        name: str = "commonsense") -> list[Path]:
    """`paper`: `harness.paper.commonsense()`; `results`: a study's tables, whose commonsense tasks
    (BoolQ, PIQA, ...) add one row per model and adapter configuration (mean over seeds)."""
    grid, paper_count, captions = commonsense_grid(paper, results)
    fig, axes = new_figure(1, height=0.6 + 0.22 * len(grid), width=7.0)
    sns.heatmap(grid, ax=axes[0], annot=True, fmt=".1f", cmap="cividis", mask=grid.isna(), linewidths=0.5,
                cbar_kws={"label": "accuracy (%)"}, annot_kws={"fontsize": 6})
    if len(grid) > paper_count:
        axes[0].axhline(paper_count, color="white", linewidth=2.5)
    axes[0].set_xlabel("task")
    axes[0].set_ylabel("")
    axes[0].grid(False)
    axes[0].tick_params(axis="x", labelrotation=30)
    plt.setp(axes[0].get_xticklabels(), ha="right", rotation_mode="anchor")
    return finish(fig, axes, "Commonsense reasoning: accuracy (%)", captions, out_dir, name)
