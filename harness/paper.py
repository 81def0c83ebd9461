"""The MoRe paper's published numbers (results/paper/, sources cited in its README.md) as tidy tables.

Tan et al. 2024, "MoRe Fine-Tuning with 10x Fewer Parameters", arXiv 2408.17383.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .store import RESULTS_DIR

PAPER_DIR = RESULTS_DIR / "paper"
SOURCE = "Tan et al. 2024 (arXiv 2408.17383)"
# The CoLA figure prints parameters in units of 2^20: 0.14 is 147,456 (see results/paper/README.md).
PAPER_MILLION = 2**20
COMMONSENSE_TASKS = ["BoolQ", "PIQA", "SIQA", "HellaSwag", "WinoGrande", "ARC-e", "ARC-c", "OBQA", "Avg"]


def _read(name: str, paper_dir: Path | str | None) -> pd.DataFrame:
    return pd.read_csv(Path(paper_dir or PAPER_DIR) / name, keep_default_na=False, na_values=[""])


def commonsense(paper_dir: Path | str | None = None) -> pd.DataFrame:
    """Table 1: one row per method x task; accuracy in percent."""
    return _read("commonsense.csv", paper_dir)


def more_vs_lora(paper_dir: Path | str | None = None) -> pd.DataFrame:
    """The "MoRe vs LoRA" figure (CoLA, RoBERTa-large): one row per point; value = MCC x 100.
    Adds `adapter_params`, the count in plain units, to sit on the same axis as our studies."""
    frame = _read("more_vs_lora.csv", paper_dir)
    frame["label"] = frame["label"].fillna("")
    frame["adapter_params"] = (frame["params_millions"] * PAPER_MILLION).round()
    return frame


def nblocks(paper_dir: Path | str | None = None) -> pd.DataFrame:
    """The "Changing the number of blocks" ablation (CoLA, RoBERTa-large); value = MCC x 100."""
    frame = _read("nblocks.csv", paper_dir)
    frame["label"] = ""
    return frame
