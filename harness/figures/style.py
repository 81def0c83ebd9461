"""How every figure looks and is saved: one column of a two-column paper, small fonts, the colour-blind
palette with fixed colours for the common series, the caption above and the legend below the axes, and a
PNG and a PDF without timestamps (the same tables redraw the same bytes, so redrawing leaves the tree clean).
"""
from __future__ import annotations

import functools
import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; notebooks show the saved PNGs

import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import EngFormatter, LogLocator, NullFormatter, NullLocator, ScalarFormatter  # noqa: E402

COLUMN_WIDTH_IN = 3.4  # one column of a two-column paper
LINE_IN = 0.14  # the height of a line of caption or legend text
OURS_MARKERS = ["o", "^", "D", "v", "P", "X"]
SERIES_ORDER = ["MoRe", "LoRA", "MoRe (square blocks)"]  # fixed colours for the common series
# Whose points: the first source's (this machine's) solid with filled markers, the next's (the reference machine's,
# beside them) dotted and fainter, as lines or as hatched bars; the paper's dashed with hollow markers.
SOURCE_LOOKS = [{}, {"linestyle": ":", "alpha": 0.6}]
SOURCE_BAR_LOOKS = [{}, {"alpha": 0.55, "hatch": "////"}]
PAPER_LOOK = {"linestyle": "--", "markerfacecolor": "none", "markeredgewidth": 1.0}
STYLE = {"font.size": 7, "axes.titlesize": 7, "axes.labelsize": 7, "xtick.labelsize": 6.5,
         "ytick.labelsize": 6.5, "legend.fontsize": 6, "figure.titlesize": 7, "pdf.fonttype": 42,
         "grid.alpha": 0.35, "savefig.dpi": 200}


def styled(draw):
    """Runs a figure function under the project's style: seaborn whitegrid, colour-blind palette, small fonts."""
    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        with sns.axes_style("whitegrid"), sns.color_palette("colorblind"), plt.rc_context(STYLE):
            return draw(*args, **kwargs)
    return wrapper


def series_colours(keys) -> dict:
    """A colour per series: the common series always get the same one."""
    keys = set(keys)  # a Series' `in` would test its index
    palette = sns.color_palette("colorblind", 10)
    ordered = [k for k in SERIES_ORDER if k in keys] + sorted(k for k in keys if k not in SERIES_ORDER)
    fixed = {k: SERIES_ORDER.index(k) for k in SERIES_ORDER}
    # the palette's free colours, then its darker shades (a study of every PEFT method has a dozen series)
    free = iter([palette[i] for i in range(10) if i not in fixed.values()] + sns.color_palette("dark", 10))
    return {k: palette[fixed[k]] if k in fixed else next(free, "0.3") for k in ordered}


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
