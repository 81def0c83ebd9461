"""Which figures a study gets, and the paper's figures: the one place that decides what is drawn.

A study draws every figure in `FIGURES` whose `applies` finds what it needs in the study's tables: quality
against parameters and the Pareto fronts when trained adapters differ in size, quality against nblocks
when MoRe's number of blocks varies, the commonsense table when a task is one of the paper's commonsense
tasks, and the cost panels always. `draw_paper` draws the paper's figures from results/paper/, each beside
our results of the study named in `PAPER_FIGURES` when they exist. Either draws the reference machine's results
(`reference_dir`, results/reference/) beside this machine's when it is given one.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from .. import paper
from ..adapters import SETTING_SHORT_NAMES
from ..store import RESULTS_DIR, machine_of
from .commonsense import commonsense_heatmap
from .cost import cost_panels
from .pareto import PARETO_COSTS, pareto_front
from .quality_nblocks import quality_vs_nblocks
from .quality_params import quality_vs_params
from .tables import COMMONSENSE_COLUMNS, SOURCE, MissingColumns, NothingToDraw, study_results

QUALITIES = ("metric", "loss")
# The columns that tell one adapter size from another; nblocks has its own figure.
SIZE_COLUMNS = ["adapter", "label", *(c for c in SETTING_SHORT_NAMES if c != "nblocks")]


def attempt(figure, *args, **kwargs) -> list[Path]:
    """Draws one figure; a figure the tables cannot support is skipped with a printed reason."""
    try:
        return figure(*args, **kwargs)
    except (MissingColumns, NothingToDraw) as err:
        print(f"skipped {kwargs.get('name') or figure.__name__}: {err}")
        return []


# ---- when a figure applies -------------------------------------------------------------------------

def trained(results: pd.DataFrame) -> bool:
    return bool(results["metric"].astype(str).str.startswith("test_").any())


def adapters_differ_in_size(results: pd.DataFrame) -> bool:
    adapters = results[results["adapter"] != "none"] if "adapter" in results else results.iloc[0:0]
    columns = [c for c in SIZE_COLUMNS if c in adapters]
    return trained(results) and len(adapters.drop_duplicates(columns)) > 1


def nblocks_varies(results: pd.DataFrame) -> bool:
    return (trained(results) and "nblocks" in results
            and results.loc[results["adapter"] == "more", "nblocks"].nunique() > 1)


def has_commonsense_task(results: pd.DataFrame) -> bool:
    return trained(results) and "task" in results and bool(results["task"].isin(COMMONSENSE_COLUMNS).any())


# ---- the registry ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Figure:
    """A figure a study may get: whether its tables support it, and how to draw all its variants."""
    applies: Callable[[pd.DataFrame], bool]
    draw: Callable[[pd.DataFrame, Path], list[Path]]


def only_more_and_lora(results: pd.DataFrame) -> bool:
    """Whether a study compares MoRe with LoRA alone, as the paper's figures do (a study of many PEFT methods
    gets no paper panel: the paper has no series of theirs)."""
    return set(results.get("adapter", pd.Series(dtype=str)).dropna()) <= {"more", "lora", "none"}


def each_quality(figure, paper_table: Callable[[], pd.DataFrame]):
    """Draws a quality figure on the task metric and on the held-out loss, the paper's series beside ours where
    the study compares what the paper does."""
    return lambda results, out_dir: [
        path for q in QUALITIES for path in
        attempt(figure, results, paper_table() if only_more_and_lora(results) else None, out_dir=out_dir, quality=q)]


def pareto_fronts(results: pd.DataFrame, out_dir) -> list[Path]:
    return [path for q in QUALITIES for cost in PARETO_COSTS for path in
            attempt(pareto_front, results, out_dir=out_dir, cost=cost, quality=q)]


FIGURES = {
    "quality_vs_params": Figure(adapters_differ_in_size, each_quality(quality_vs_params, paper.more_vs_lora)),
    "pareto": Figure(adapters_differ_in_size, pareto_fronts),
    "quality_vs_nblocks": Figure(nblocks_varies, each_quality(quality_vs_nblocks, paper.nblocks)),
    "commonsense": Figure(has_commonsense_task, lambda results, out_dir: attempt(
        commonsense_heatmap, paper.commonsense(), results, out_dir=out_dir)),
    "cost": Figure(lambda results: True, lambda results, out_dir: attempt(cost_panels, results, out_dir=out_dir)),
}
# The paper's quality figures: file stem, figure, the paper's table, and the study whose results sit beside it.
PAPER_FIGURES = [("more_vs_lora", quality_vs_params, paper.more_vs_lora, "rank_ablation"),
                 ("nblocks", quality_vs_nblocks, paper.nblocks, "block_ablation")]


def figures_for(results: pd.DataFrame) -> list[str]:
    """The names of the figures in `FIGURES` that a study's tables support."""
    return [name for name, figure in FIGURES.items() if figure.applies(results)]


# ---- drawing ---------------------------------------------------------------------------------------

def draw_study(study: str, results_dir=None, out_dir=None, reference_dir=None) -> list[Path]:
    """Every figure that applies to a study's results under `results_dir` (default results/), with the reference
    machine's under `reference_dir` beside them when given, into <results_dir>/<study>/figures/ (or `out_dir`)."""
    results = study_results(study, results_dir, reference_dir)
    if results is None or not (results[SOURCE] == machine_of(results_dir)).any():
        print(f"{study}: no results under {Path(results_dir or RESULTS_DIR) / study}; nothing to draw. "
              f"Run `python -m harness run {study}` first; the reference machine's figures: "
              f"`python -m harness figures {study} --results-dir results/reference`.")
        return []
    out_dir = Path(out_dir or Path(results_dir or RESULTS_DIR) / study / "figures")
    paths = [path for name in figures_for(results) for path in FIGURES[name].draw(results, out_dir)]
    print(f"{study}: {len(paths) // 2} figures in {out_dir}")
    return paths


def draw_paper(out_dir=None, results_dir=None, reference_dir=None) -> list[Path]:
    """The paper's figures from results/paper/, beside our results of the studies in `PAPER_FIGURES` where
    they exist (this machine's and the reference machine's), and the paper's commonsense table. Default folder:
    results/paper/figures/."""
    out_dir = Path(out_dir or paper.PAPER_DIR / "figures")
    paths = []
    for stem, draw, paper_table, study in PAPER_FIGURES:
        ours, table = study_results(study, results_dir, reference_dir), paper_table()
        # The paper's metric, with ours beside it when we have it; then ours as held-out loss beside the paper.
        drawn = attempt(draw, ours, table, out_dir=out_dir, name=f"{stem}_metric") if ours is not None else []
        paths += drawn or draw(None, table, out_dir=out_dir, name=f"{stem}_metric")
        if ours is not None:
            paths += attempt(draw, ours, table, out_dir=out_dir, quality="loss", name=f"{stem}_loss")
    paths += commonsense_heatmap(paper.commonsense(), out_dir=out_dir)
    print(f"paper: {len(paths) // 2} figures in {out_dir}")
    return paths


def studies_with_results(results_dir=None) -> list[str]:
    return sorted(p.parent.name for p in Path(results_dir or RESULTS_DIR).glob("*/trials.csv"))
