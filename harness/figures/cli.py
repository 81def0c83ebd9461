"""`python -m harness figures [STUDY ...] [--paper] [--results-dir DIR]`: draws the figures that apply to each
study under results/<study>/figures/, and the paper's under results/paper/figures/."""
from __future__ import annotations

import argparse

from ..store import RESULTS_DIR

HELP = "draw the figures of studies under results/<study>/figures/, and the paper's with --paper"


def configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds the figures arguments to a (sub-)parser."""
    parser.add_argument("studies", nargs="*", metavar="STUDY",
                        help="studies to draw (default: every study with results)")
    parser.add_argument("--paper", action="store_true", help="draw the paper's figures beside ours, "
                        "into results/paper/figures/ (alone, when no study is named)")
    parser.add_argument("--results-dir", default=None, help="read results from here instead of results/")
    return parser


def run(args: argparse.Namespace) -> int:
    from .registry import draw_paper, draw_study, studies_with_results  # matplotlib only when drawing

    studies = args.studies or ([] if args.paper else studies_with_results(args.results_dir))
    if not studies and not args.paper:
        print(f"No study has results under {args.results_dir or RESULTS_DIR}; nothing to draw.")
    for study in studies:
        draw_study(study, args.results_dir)
    if args.paper:
        draw_paper(results_dir=args.results_dir)
    return 0


def main(argv=None) -> int:
    parser = configure(argparse.ArgumentParser(prog="python -m harness.figures", description=HELP))
    return run(parser.parse_args(argv))
