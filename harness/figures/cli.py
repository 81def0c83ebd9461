"""`python -m harness figures [STUDY ...] [--paper] [--results-dir DIR]`: draws the figures that apply to each
study under DIR/<study>/figures/ (DIR: results/), with the reference machine's results (results/reference/)
beside DIR's unless DIR is results/reference itself, and the paper's under results/paper/figures/."""
from __future__ import annotations

import argparse

from ..store import RESULTS_DIR, reference_beside

HELP = ("draw the figures of studies under results/<study>/figures/, the reference machine's results beside "
        "this machine's, and the paper's with --paper")


def configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds the figures arguments to a (sub-)parser."""
    parser.add_argument("studies", nargs="*", metavar="STUDY",
                        help="studies to draw (default: every study with results)")
    parser.add_argument("--paper", action="store_true", help="draw the paper's figures beside ours, "
                        "into results/paper/figures/ (alone, when no study is named)")
    parser.add_argument("--results-dir", default=None, help="read results from here instead of results/ "
                        "(results/reference: the reference machine's alone)")
    return parser


def run(args: argparse.Namespace) -> int:
    from .registry import draw_paper, draw_study, studies_with_results  # matplotlib only when drawing

    studies = args.studies or ([] if args.paper else studies_with_results(args.results_dir))
    if not studies and not args.paper:
        print(f"No study has results under {args.results_dir or RESULTS_DIR}; nothing to draw. The reference "
              "machine's: `python -m harness figures --results-dir results/reference`.")
    reference_dir = reference_beside(args.results_dir)
    for study in studies:
        draw_study(study, args.results_dir, reference_dir=reference_dir)
    if args.paper:
        draw_paper(results_dir=args.results_dir, reference_dir=reference_dir)
    return 0


def main(argv=None) -> int:
    parser = configure(argparse.ArgumentParser(prog="python -m harness.figures", description=HELP))
    return run(parser.parse_args(argv))
