"""`python -m harness COMMAND`: the harness from the command line."""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import sys
import typing

import torch
import yaml

from . import analysis
from .adapters import AdapterSpec, known_methods, parse_adapter
from .executors import make_executor
from .layers import AdapterBuildError, adapter_params
from .measure.records import Measurement
from .models import MODELS
from .run_trial import run_trial
from .runner import run_study, select
from .spec import STUDIES_DIR, Study, load_study, rate_key, study_parameter_plan, study_path
from .store import REFERENCE_DIR, Store, final_values, load
from .tasks import TASKS
from .trial import FIELD_TYPES, TrialConfig


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


def print_table(rows, out=None, scoped: bool = False) -> None:
    out = out or sys.stdout
    shown = [r for r in rows if scoped or not r.scope]
    width = max((len(r.metric) for r in shown), default=10)
    for r in shown:
        name = r.metric + (f" [{r.scope}]" if r.scope else "")
        note = f"  ({r.note})" if r.note else ""
        print(f"{name:<{width}}  {format_value(r.value, r.unit):>16}{note}", file=out)


def cmd_measure(args) -> int:
    adapter = parse_adapter(args.adapter) if args.adapter else None
    config = TrialConfig(kind="measure", model=args.model, adapter=adapter,
                         **given(args, "seq_len", "batch", "device", "measure", "repeats", "timing_warmup", "threads",
                                 "target_modules", "head"))
    result = run_trial(config)
    if args.json:
        json.dump({"config": config.to_json(), **result.to_json()}, sys.stdout, indent=1, default=str)
        print()
    else:
        info = result.info["model_info"]
        print(f"{args.model} ({info.get('weights')} weights) + {result.info['adapter'] or 'no adapter'}, "
              f"batch {config.batch} x seq {config.seq_len} on {result.device}, {result.env['torch_threads']} threads")
        print_table([Measurement(**row) for row in result.rows], scoped=args.per_module)
    return 0


def default_profile(study: str) -> str:
    """gpu where CUDA is; on a CPU, the study's `quick` profile where it has one, else `cpu`."""
    if torch.cuda.is_available():
        return "gpu"
    try:
        profiles = yaml.safe_load(study_path(study).read_text()).get("profiles") or {}
    except Exception:  # a missing or bad file: load_study says what is wrong with it
        profiles = {}
    return "quick" if "quick" in profiles else "cpu"


def _params_cell(model: str, target_modules, spec) -> str:
    try:
        return f"{adapter_params(model, target_modules, spec):,}" if spec else "0"
    except AdapterBuildError:
        return "cannot build"


def dry_run_table(trials: list[TrialConfig]) -> str:
    lines = [f"{'trial_id':<16}  {'model':<20} {'task':<10} {'adapter':<30} {'seq x batch':>11} {'lr':>8} {'seed':>4} "
             f"{'adapter params (meta)':>24}"]
    for t in trials:
        spec = t.adapter
        count = "-" if t.kind == "interleaved" else _params_cell(t.model, t.target_modules, spec)
        label = {"train": t.arm, "interleaved": f"step time of {len(t.adapters)} in turn"}.get(
            t.kind, spec.label if spec else "none")
        shape = f"{t.seq_len} x {t.batch}"
        lr = str(t.lr) if t.kind == "train" else "-"  # a measure or interleaved trial trains nothing
        lines.append(f"{t.id:<16}  {t.model:<20} {str(t.task or '-'):<10} {label:<30} {shape:>11} {lr:>8} "
                     f"{t.seed:>4} {count:>24}")
    return "\n".join(lines)


def parameter_plan_table(study: Study) -> str:
    """Per model, each entry's configuration and its adapter parameters (on the meta device), beside the
    configuration a `match` entry was matched to; "own size" where the entry sets no knob."""
    lines = []
    for model, plan in study_parameter_plan(study).items():
        rows = [("entry", "method", "label", "knob", "params", "matched to", "params")]
        for m in plan:
            matched = (m.anchor.label, f"{m.anchor_params:,}") if m.anchor else ("-", "")
            rows.append((f"adapters[{m.entry}]", m.spec.method, study.raw["adapters"][m.entry].get("label") or "",
                         ",".join(f"{k}={v}" for k, v in m.knob.items()) or "own size",
                         "cannot build" if m.params is None else f"{m.params:,}", *matched))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines.append(f"parameters on {model} (adapter parameters of the PEFT model built on the meta device):")
        for row, m in zip(rows, [None] + plan):
            cells = [c.rjust(w) if i in (4, 6) else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
            lines.append(("  " + "  ".join(cells)).rstrip() + (f"  ({m.error})" if m and m.error else ""))
    return "\n".join(lines)


def cmd_run(args) -> int:
    profile = args.profile or default_profile(args.study)
    study = load_study(args.study, profile=profile)
    searching = study.learning_rates == "validation"
    first = study.search() if searching else study.at_rates(reference_rates(study, profile))
    later = _seed_count(study) if searching else 0  # trials the seeds after the search add
    if args.dry_run:
        shown = select(first, args.only)
        print(f"study {study.name} ({study.path}), profile {profile}: {len(shown)} trials")
        print(parameter_plan_table(study))
        print(dry_run_table(shown))
        if later:
            print(f"then the other seeds of each tuned arm at the rate chosen on validation at seed {study.tuning_seed}: "
                  f"{later} more trials")
        return 0
    store = Store(study.name, args.results_dir)
    if args.fresh:
        moved = store.move_aside()
        if moved:
            print(f"previous results moved to {moved}")
    executor = make_executor(args.executor, args.jobs or study.jobs, args.address)
    counts = run_study(study, select(first, args.only), executor, store, args.retry_failed)
    if later:
        chosen = analysis.chosen_rates(study.name, args.results_dir)
        tuned = {rate_key(t) for t in first if study.tuned(t)}
        print("learning rates chosen on validation: " + "; ".join(f"{key[2]} {lr:g}" for key, lr in chosen.items()
                                                                   if key in tuned))
        more = run_study(study, select(study.at_rates(chosen), args.only), executor, store, args.retry_failed)
        counts = {key: counts[key] + more[key] for key in counts}
    # failed trials are recorded and reported, and the study's figures still follow (--strict to fail instead)
    return 1 if args.strict and counts["failed"] else 0


def _seed_count(study: Study) -> int:
    """How many trials the seeds after the search add: one per tuned arm and later seed."""
    return len({(rate_key(t), t.seed) for t in study.trials if study.tuned(t) and t.seed != study.tuning_seed})


def reference_rates(study: Study, profile: str) -> dict:
    """Each arm's rate as the reference machine's results chose it; an error says how to get them if absent."""
    chosen = analysis.chosen_rates(study.name, REFERENCE_DIR)
    missing = sorted({t.arm for t in study.trials if study.tuned(t) and rate_key(t) not in chosen})
    if missing:
        raise ValueError(f"Profile {profile!r} of {study.name} runs each arm at the learning rate the reference "
                         f"machine's results chose, and {REFERENCE_DIR / study.name} has none for: {', '.join(missing)}. "
                         f"Run the full protocol instead: `python -m harness run {study.name} --profile cpu`.")
    return chosen


def cmd_list(args) -> int:
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


def compare_study(args) -> tuple[Study, list[AdapterSpec]]:
    """An ad-hoc study: one trial per adapter (measured, or trained when a task is given), plus one
    trial that times all adapters' training steps interleaved in one process."""
    specs = [AdapterSpec.parse(text) for text in args.adapters]
    common = TrialConfig(kind="measure", model=args.model,
                         **given(args, "target_modules", "seq_len", "batch", "device", "threads", "repeats", "lr"))
    if args.task:
        common = dataclasses.replace(common, kind="train", task=args.task, **given(args, "steps", "validation_examples",
                                                                                        "test_examples"))
    trials = [dataclasses.replace(common, adapter=spec) for spec in specs]
    trials.append(dataclasses.replace(common, kind="interleaved", task=None, adapters=tuple(specs)))
    name = "compare-" + hashlib.sha256(" ".join(t.id for t in trials).encode()).hexdigest()[:8]
    return Study(name, "harness compare", None, {}, trials), specs


def compare_table(frame, study, specs, task: str | None) -> str:
    """Adapters side by side; each column after the first also as a ratio to the first."""
    final = final_values(frame)
    labels = [s.label for s in specs]
    metrics = ["trainable_params", "flops_forward", "peak_rss_bytes", "peak_memory_allocated_bytes", "time_step_s"]
    if task:
        metrics += sorted(m for m in final.metric.unique() if m.startswith(("val_", "test_", "chance_")) and not m.endswith("_se"))
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
    study, specs = compare_study(args)
    store = Store(study.name, args.results_dir)
    run_study(study, study.trials, make_executor("local"), store)
    frame = load(study.name, args.results_dir)
    frame = frame[frame.status == "ok"]
    trial = study.trials[0]
    print(f"\n{args.model}" + (f" on {args.task}" if args.task else "") + f", batch {trial.batch} x seq {trial.seq_len}, "
          f"ratios to {specs[0].label}:")
    print(compare_table(frame, study, specs, args.task))
    return 0


def cmd_compare_arms(args) -> int:
    comparison = analysis.compare_arms(args.study, args.a, args.b, args.split, args.results_dir, args.model, args.task)
    print(analysis.format_comparison(comparison))
    return 0


def cmd_analyse(args) -> int:
    table, path = analysis.write_summary(args.study, args.results_dir)
    print(analysis.format_summary(table))
    print(f"every column in {path}")
    return 0


def trial_options(parser, *names: str) -> None:
    """Options for TrialConfig fields; one left out keeps the field's default (shown in --help)."""
    for name in names:
        default = TrialConfig.__dataclass_fields__[name].default
        hint = FIELD_TYPES[name]
        hint = next((t for t in typing.get_args(hint) if t is not type(None)), hint) if not isinstance(hint, type) else hint
        multiple = {"nargs": "+"} if typing.get_origin(hint) is tuple else {"type": hint}
        parser.add_argument(f"--{name.replace('_', '-')}", default=None, help=f"default: {default}", **multiple)


def given(args, *names: str) -> dict:
    """The TrialConfig fields the command line set."""
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m harness", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    m = sub.add_parser("measure", help="measure one model with one adapter (no training)")
    m.add_argument("--model", required=True, help="a registry name (minilm, smollm2, llama-7b, ...), hub id or path")
    m.add_argument("--adapter", default=None, help="e.g. more:nblocks=4,blk_r=4 or lora:r=8; 'none' for the bare model")
    trial_options(m, "seq_len", "batch", "device", "repeats", "threads", "target_modules")
    m.add_argument("--what", dest="measure", type=lambda text: text.split(","), default=None,
                   help=f"comma-separated: params,flops,memory,time (default: {','.join(TrialConfig.measure)})")
    m.add_argument("--warmup", dest="timing_warmup", type=int, default=None,
                   help=f"untimed steps before the timed ones (default: {TrialConfig.timing_warmup})")
    m.add_argument("--head", default=None, help="sequence_classification, causal_lm or base (default: by model)")
    m.add_argument("--per-module", action="store_true", help="also print per-module rows")
    m.add_argument("--json", action="store_true", help="print the records as JSON")
    m.set_defaults(func=cmd_measure)

    r = sub.add_parser("run", help="run a study (resumes by default)")
    r.add_argument("study", help="a study name from studies/ or a path to a .yaml file")
    r.add_argument("--dry-run", action="store_true", help="print the expanded trials and run nothing")
    r.add_argument("--profile", default=None, help="budget profile (default: gpu when CUDA is available; else the "
                   "study's quick profile where it has one, else cpu)")
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
    trial_options(c, "steps", "lr", "head_lr", "validation_examples", "test_examples", "seq_len", "batch", "repeats", "device", "threads", "target_modules")
    c.add_argument("--results-dir", default=None)
    c.set_defaults(func=cmd_compare)

    ca = sub.add_parser("compare-arms", help="the paired difference of two arms of a study, with its 95%% interval")
    ca.add_argument("study")
    ca.add_argument("a", help="an arm's name or a unique part of it: 'more(blk_r=1,nblocks=4)', 'r=16', 'calibrated'")
    ca.add_argument("b", help="the same; OTHER:arm takes the arm from study OTHER (one model and task, paired on "
                              "the same questions and seeds)")
    ca.add_argument("--split", default="test", choices=analysis.SPLITS)
    ca.add_argument("--model", default=None, help="the model, where the study ran several")
    ca.add_argument("--task", default=None, help="the task, where the study ran several")
    ca.add_argument("--results-dir", default=None)
    ca.set_defaults(func=cmd_compare_arms)

    an = sub.add_parser("analyse", help="each arm at its chosen learning rate against the references: analysis.csv")
    an.add_argument("study")
    an.add_argument("--results-dir", default=None)
    an.set_defaults(func=cmd_analyse)

    li = sub.add_parser("list", help="list studies, models, tasks and adapters")
    li.set_defaults(func=cmd_list)

    from .figures import cli as figures_cli

    figures_cli.configure(sub.add_parser("figures", help=figures_cli.HELP)).set_defaults(func=figures_cli.run)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
