"""`python -m harness COMMAND`: the harness from the command line."""
from __future__ import annotations

import argparse
import json
import math
import sys

from .adapters import AdapterSpec


def format_value(value: float, unit: str) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "-"
    if unit == "bytes":
        for scale, name in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
            if abs(value) >= scale:
                return f"{value / scale:.2f} {name}"
        return f"{value:.0f} B"
    if unit == "flops":
        for scale, name in ((1e12, "TFLOP"), (1e9, "GFLOP"), (1e6, "MFLOP")):
            if abs(value) >= scale:
                return f"{value / scale:.3f} {name}"
        return f"{value:.0f} FLOP"
    if unit == "s":
        return f"{value * 1e3:.2f} ms"
    if float(value).is_integer():
        return f"{int(value):,} {unit}"
    return f"{value:.4g} {unit}"


def print_table(rows, out=sys.stdout, scoped: bool = False) -> None:
    shown = [r for r in rows if scoped or not r.scope]
    width = max((len(r.metric) for r in shown), default=10)
    for r in shown:
        name = r.metric + (f" [{r.scope}]" if r.scope else "")
        note = f"  ({r.note})" if r.note else ""
        print(f"{name:<{width}}  {format_value(r.value, r.unit):>16}{note}", file=out)


def cmd_measure(args) -> int:
    from .measure import measure_trial

    adapter = None if args.adapter in (None, "none") else AdapterSpec.parse(args.adapter)
    result = measure_trial(
        args.model, adapter, seq_len=args.seq_len, batch=args.batch, device=args.device,
        what=args.what.split(","), repeats=args.repeats, warmup=args.warmup, threads=args.threads,
        target_modules=args.target_modules, head=args.head,
    )
    if args.json:
        json.dump({"record": result.record, "rows": [r.as_dict() for r in result.rows]}, sys.stdout, indent=1, default=str)
        print()
    else:
        info = result.record["model_info"]
        print(f"{args.model} ({info.get('weights')} weights) + {result.record['adapter']}, "
              f"batch {args.batch} x seq {args.seq_len} on {result.record['device']}, "
              f"{result.record['env']['torch_threads']} threads")
        print_table(result.rows, scoped=args.per_module)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m harness", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    m = sub.add_parser("measure", help="measure one model with one adapter (no training)")
    m.add_argument("--model", required=True, help="a registry name (minilm, smollm2, llama-7b, ...), hub id or path")
    m.add_argument("--adapter", default=None, help="e.g. more:nblocks=4,blk_r=4 or lora:r=8; 'none' for the bare model")
    m.add_argument("--seq-len", type=int, default=128)
    m.add_argument("--batch", type=int, default=8)
    m.add_argument("--device", default="cpu", help="cpu or cuda")
    m.add_argument("--what", default="params,flops,memory,time", help="comma-separated: params,flops,memory,time")
    m.add_argument("--repeats", type=int, default=10)
    m.add_argument("--warmup", type=int, default=2)
    m.add_argument("--threads", type=int, default=None, help="torch CPU threads (recorded)")
    m.add_argument("--target-modules", nargs="+", default=None)
    m.add_argument("--head", default=None, help="sequence_classification, causal_lm or base (default: by model)")
    m.add_argument("--per-module", action="store_true", help="also print per-module rows")
    m.add_argument("--json", action="store_true", help="print the records as JSON")
    m.set_defaults(func=cmd_measure)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
