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


def default_profile() -> str:
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def load_for_run(study_name: str, profile: str):
    from .layers import layer_dims
    from .spec import load_study

    return load_study(study_name, profile=profile, layer_dims=layer_dims)


def dry_run_table(trials) -> str:
    from .layers import layer_dims

    lines = [f"{'trial_id':<16}  {'model':<20} {'task':<10} {'adapter':<30} {'seq x batch':>11} {'lr':>8} {'seed':>4} "
             f"{'trainable (closed form)':>24}"]
    for t in trials:
        c = t.config
        spec = t.adapter
        count = spec.closed_form_params(layer_dims(c["model"], c.get("target_modules"))) if spec else 0
        label = spec.label if spec else "none"
        shape = f"{c.get('seq_len', '-')} x {c.get('batch', '-')}"
        lines.append(f"{t.id:<16}  {c['model']:<20} {str(c.get('task') or '-'):<10} {label:<30} {shape:>11} {str(c.get('lr')):>8} "
                     f"{c.get('seed', 0):>4} {('-' if count is None else f'{count:,}'):>24}")
    return "\n".join(lines)


def cmd_run(args) -> int:
    from .executors import make_executor
    from .runner import run_study, select
    from .store import Store

    profile = args.profile or default_profile()
    study = load_for_run(args.study, profile)
    trials = select(study.trials, args.only)
    if args.dry_run:
        print(f"study {study.name} ({study.path}), profile {profile}: {len(trials)} trials")
        print(dry_run_table(trials))
        return 0
    store = Store(study.name, args.results_dir)
    if args.fresh:
        moved = store.move_aside()
        if moved:
            print(f"previous results moved to {moved}")
    jobs = args.jobs or study.jobs
    counts = run_study(study, trials, make_executor(args.executor, jobs, args.address), store, args.retry_failed)
    # failed trials are recorded and reported, and the study's figures still follow (--strict to fail instead)
    return 1 if args.strict and counts["failed"] else 0


def cmd_list(args) -> int:
    from .adapters import known_methods
    from .models import MODELS
    from .spec import STUDIES_DIR, study_path
    from .tasks import TASKS

    import yaml

    print("studies:")
    for path in sorted(STUDIES_DIR.glob("*.yaml")):
        raw = yaml.safe_load(study_path(path.stem).read_text())
        print(f"  {path.stem:<18} {raw.get('description', '').strip().splitlines()[0] if raw.get('description') else ''}")
    print("models:")
    for name, entry in MODELS.items():
        print(f"  {name:<18} {entry.description}")
    print("  (or any Hugging Face hub id owner/name, or a local folder)")
    print("tasks:")
    print("  " + ", ".join(TASKS))
    print("adapters:")
    print("  " + ", ".join(known_methods()))
    return 0


def compare_study(args):
    """An ad-hoc study: one trial per adapter (measured, and trained when a task is given), plus one
    trial that times all adapters' training steps interleaved in one process."""
    import hashlib

    from .spec import Study, Trial

    specs = [AdapterSpec.parse(text) for text in args.adapters]
    key = json.dumps([args.model, args.task, args.adapters, args.steps, args.seq_len, args.batch, args.lr], default=str)
    name = "compare-" + hashlib.sha256(key.encode()).hexdigest()[:8]
    common = {"model": args.model, "target_modules": args.target_modules, "seq_len": args.seq_len,
              "batch": args.batch, "device": args.device, "seed": 0, "threads": args.threads}
    trials = []
    for spec in specs:
        config = {**common, "adapter": spec.method, "adapter_params": spec.params, "measure": ["params", "flops", "memory", "time"],
                  "repeats": args.repeats}
        if args.task:
            config.update(task=args.task, steps=args.steps, lr=args.lr or 1e-3, eval_examples=args.eval_examples)
        trials.append(Trial(name, config))
    trials.append(Trial(name, {**common, "kind": "interleaved", "adapters": [s.text for s in specs], "repeats": args.repeats}))
    return Study(name, "harness compare", None, {}, trials), specs


def compare_table(frame, study, specs, task: str | None) -> str:
    """Adapters side by side; each column after the first also as a ratio to the first."""
    final = frame[(frame.scope == "") & frame.step.isna()]
    labels = [s.label for s in specs]
    metrics = ["trainable_params", "flops_forward", "peak_rss_bytes", "peak_memory_allocated_bytes", "time_step_s"]
    if task:
        metrics += sorted(m for m in final.metric.unique() if m.startswith(("eval_", "baseline_")) and not m.endswith("_se"))
    by_adapter = {spec.label: final[final.trial_id == trial.id].set_index("metric")["value"]
                  for spec, trial in zip(specs, study.trials)}
    lines = [f"{'metric':<32}" + "".join(f"{label:>28}" for label in labels)]
    for metric in metrics:
        values = [by_adapter[label].get(metric, math.nan) for label in labels]
        if all(isinstance(v, float) and math.isnan(v) for v in values):
            continue
        unit = frame.loc[frame.metric == metric, "unit"].iloc[0]
        cells = [format_value(values[0], unit)]
        for v in values[1:]:
            ratio = v / values[0] if values[0] else math.nan
            cells.append(f"{format_value(v, unit)} ({ratio:.2f}x)")
        lines.append(f"{metric:<32}" + "".join(f"{c:>28}" for c in cells))
    ratios = frame[frame.metric == "time_ratio"]
    if not ratios.empty:
        cells = [f"{ratios[ratios.scope == label].value.iloc[0]:.2f}x" if (ratios.scope == label).any() else "-" for label in labels]
        lines.append(f"{'step time, interleaved (ratio)':<32}" + "".join(f"{c:>28}" for c in cells))
    return "\n".join(lines)


def cmd_compare(args) -> int:
    from .executors import make_executor
    from .runner import run_study
    from .store import Store, load

    study, specs = compare_study(args)
    store = Store(study.name, args.results_dir)
    run_study(study, study.trials, make_executor("local"), store)
    frame = load(study.name, args.results_dir)
    frame = frame[frame.status == "ok"]
    print(f"\n{args.model}" + (f" on {args.task}" if args.task else "") + f", batch {args.batch} x seq {args.seq_len}, "
          f"ratios to {specs[0].label}:")
    print(compare_table(frame, study, specs, args.task))
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

    r = sub.add_parser("run", help="run a study (resumes by default)")
    r.add_argument("study", help="a study name from studies/ or a path to a .yaml file")
    r.add_argument("--dry-run", action="store_true", help="print the expanded trials and run nothing")
    r.add_argument("--profile", default=None, help="budget profile (default: gpu when CUDA is available, else cpu)")
    r.add_argument("--executor", default="local", choices=["local", "ray"])
    r.add_argument("--jobs", type=int, default=None,
                   help="trials at a time (local), or CPUs for a local Ray instance; default: the profile's jobs, else 1")
    r.add_argument("--address", default=None, help="Ray cluster address: auto or ray://host:port")
    r.add_argument("--only", action="append", default=None, metavar="KEY=VALUE", help="run only matching trials")
    r.add_argument("--retry-failed", action="store_true", help="rerun trials that failed before")
    r.add_argument("--fresh", action="store_true", help="start over; old results are moved aside, never deleted")
    r.add_argument("--results-dir", default=None, help="write somewhere other than results/")
    r.add_argument("--strict", action="store_true", help="exit with status 1 when any trial failed")
    r.set_defaults(func=cmd_run)

    c = sub.add_parser("compare", help="compare adapters on your own hardware and model, side by side")
    c.add_argument("--model", required=True)
    c.add_argument("--adapters", nargs="+", required=True, help="e.g. lora:r=8 more:nblocks=4,blk_r=4")
    c.add_argument("--task", default=None, help="also fine-tune and evaluate on this task")
    c.add_argument("--steps", type=int, default=50)
    c.add_argument("--lr", type=float, default=None)
    c.add_argument("--eval-examples", type=int, default=200)
    c.add_argument("--seq-len", type=int, default=128)
    c.add_argument("--batch", type=int, default=8)
    c.add_argument("--repeats", type=int, default=5)
    c.add_argument("--device", default="cpu")
    c.add_argument("--threads", type=int, default=None)
    c.add_argument("--target-modules", nargs="+", default=None)
    c.add_argument("--results-dir", default=None)
    c.set_defaults(func=cmd_compare)

    li = sub.add_parser("list", help="list studies, models, tasks and adapters")
    li.set_defaults(func=cmd_list)

    from .figures import cli as figures_cli

    figures_cli.configure(sub.add_parser("figures", help=figures_cli.HELP)).set_defaults(func=figures_cli.run)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
