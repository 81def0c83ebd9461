"""Study files (studies/*.yaml) -> a validated Study -> its trials' configs.

A study file declares models, tasks, adapters with the axes each sweeps, target modules, learning
rates and seeds, the training budget per named profile, and which measurements to take. Axes
expand as a Cartesian product; `zip` groups expand together; `where` filters drop points. An entry
with `match: more` (any method, with axes over its size knob: LoRA's r, VeRA's r, BOFT's boft_block_size,
FourierFT's n_frequency, ...) keeps, for each MoRe configuration, only the knob value whose trainable-parameter
count is nearest, each count taken on the PEFT model built on the meta device (harness.layers), before
anything runs. An entry without `match` runs at the size its own fields give.

Each grid point becomes a `TrialConfig` (harness.trial): a study with tasks trains, one without
measures. An arm with several learning rates is tuned in two stages (`Study.search`, then `Study.at_rates`):
every rate at the study's smallest seed, the rate chosen on validation (harness.analysis), then the other seeds at that
rate only. A profile with `learning_rates: reference` skips the search and runs each arm at the rate the
reference machine's results chose (results/reference/<study>); `arms: [...]` keeps only the arms named (as the
results name them, e.g. `more(blk_r=1,nblocks=4)`) beside the references. A profile's other keys are TrialConfig's
fields (besides `seeds`, `shapes` and `jobs`, which expand the grid or pace the runner), so they are checked as the
trials are. A training study whose `measure` names `flops` adds one counting (measure) trial per adapter
configuration, and one whose `measure` names `time` one interleaved trial per step shape that times every
configuration in turn (`_flop_trials`, `_timing_trials`); neither trains, and neither changes a training trial.
Everything is checked before anything runs; an error names the file, the key and the reason.
"""
from __future__ import annotations

import ast
import dataclasses
import itertools
import math
import operator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .adapters import NO_ADAPTER, make_adapter
from .hints import did_you_mean
from .layers import AdapterBuildError, adapter_params
from .models import is_decoder
from .scoring import sequences_per_example
from .tasks import TASKS
from .trial import FIELD_TYPES, TrialConfig, TrialConfigError, check_model, check_task, check_value

STUDIES_DIR = Path(__file__).resolve().parents[1] / "studies"

STUDY_KEYS = {"name": str, "description": str, "models": list, "tasks": list, "adapters": list,
              "target_modules": list, "seeds": list, "measure": list, "profiles": dict, "shapes": list}
ADAPTER_KEYS = {"method": str, "axes": dict, "zip": dict, "where": list, "lr": list, "match": str, "label": str}
# TrialConfig's fields that the study sets outside its profiles
FROM_THE_STUDY = {"kind", "model", "task", "adapter", "adapters", "label", "target_modules", "lr", "seed", "measure",
                  "profile", "calibrate"}
GRID_KEYS = {"seeds": list, "shapes": list, "jobs": int, "learning_rates": str, "arms": list}
LEARNING_RATES = ("validation", "reference")  # where a tuned arm's rate comes from: the search here, or the reference
# Added to every training study: the references an adapter must beat (harness.trial.HEAD_ONLY, CALIBRATED)
REFERENCE_ARMS = [{"adapter": None}, {"adapter": None, "calibrate": True}]
PROFILE_KEYS = [name for name in FIELD_TYPES if name not in FROM_THE_STUDY] + list(GRID_KEYS)


class StudyError(ValueError):
    """A bad study file: says which file, which key and why."""

    def __init__(self, path, key: str, reason: str):
        super().__init__(f"{path}: {key}: {reason}")


@dataclass
class Study:
    name: str
    description: str
    path: Path | None
    raw: dict
    trials: list[TrialConfig] = field(default_factory=list)  # the whole grid: every arm at each rate and seed
    jobs: int = 1  # trials at a time the profile suggests (--jobs overrides); not part of any trial
    learning_rates: str = "validation"  # a tuned arm's rate: searched here on validation, or the reference's

    @property
    def tuning_seed(self) -> int | None:
        return min((t.seed for t in self.trials), default=None)

    def tuned(self, trial: TrialConfig) -> bool:
        """Whether the trial's arm has more than one learning rate in the study."""
        return len({t.lr for t in self.trials if rate_key(t) == rate_key(trial)}) > 1

    def search(self) -> list[TrialConfig]:
        """The first stage: every rate of a tuned arm at the tuning seed; an arm with one rate, at every seed."""
        return [t for t in self.trials if t.seed == self.tuning_seed or not self.tuned(t)]

    def at_rates(self, chosen: dict) -> list[TrialConfig]:
        """Every arm at every seed, a tuned arm only at its chosen rate (`chosen`: rate_key -> lr). A tuned arm
        with no chosen rate (each of its search trials failed) is left out."""
        return [t for t in self.trials if not self.tuned(t) or
                (rate_key(t) in chosen and math.isclose(t.lr, chosen[rate_key(t)]))]


def rate_key(trial: TrialConfig) -> tuple:
    """What one learning rate is chosen for (harness.analysis.choose_learning_rates groups the same way)."""
    return trial.model, trial.task, trial.arm


def study_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    candidate = STUDIES_DIR / f"{name_or_path}.yaml"
    if candidate.exists():
        return candidate
    known = sorted(p.stem for p in STUDIES_DIR.glob("*.yaml"))
    raise StudyError(name_or_path, "study", f"no such study file.{did_you_mean(name_or_path, known)} "
                     f"Known studies: {', '.join(known)}.")


def _check_keys(path, where: str, data: dict, allowed: dict) -> None:
    if not isinstance(data, dict):
        raise StudyError(path, where, f"expected a mapping, got {type(data).__name__}")
    for key, value in data.items():
        if key not in allowed:
            raise StudyError(path, f"{where}.{key}" if where else key,
                             f"unknown key.{did_you_mean(key, allowed)} Allowed: {', '.join(allowed)}")
        if not isinstance(value, allowed[key]) or (allowed[key] is int and isinstance(value, bool)):
            raise StudyError(path, f"{where}.{key}" if where else key,
                             f"expected {allowed[key].__name__}, got {type(value).__name__} ({value!r})")


def _check_profile(path, where: str, data: dict) -> None:
    """A profile or a shape: TrialConfig's own checks, plus the keys that expand the grid."""
    if not isinstance(data, dict):
        raise StudyError(path, where, f"expected a mapping, got {type(data).__name__}")
    for key, value in data.items():
        if key in GRID_KEYS:
            _check_keys(path, where, {key: value}, GRID_KEYS)
        elif key not in PROFILE_KEYS:
            raise StudyError(path, f"{where}.{key}", f"unknown key.{did_you_mean(key, PROFILE_KEYS)} "
                             f"Allowed: {', '.join(PROFILE_KEYS)}")
        else:
            try:
                check_value(key, value)
            except TrialConfigError as err:
                raise StudyError(path, f"{where}.{key}", err.reason) from None


# ---- `where` filters: comparisons and arithmetic over axis names, nothing else ----------------------
_OPS = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge, ast.Eq: operator.eq,
        ast.NotEq: operator.ne, ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}


def _evaluate(node, names: dict):
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, names)
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id not in names:
            raise KeyError(node.id)
        return names[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_evaluate(node.left, names), _evaluate(node.right, names))
    if isinstance(node, ast.BoolOp):
        values = [_evaluate(v, names) for v in node.values]
        return all(values) if isinstance(node.op, ast.And) else any(values)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return not _evaluate(node.operand, names)
    if isinstance(node, ast.Compare):
        left = _evaluate(node.left, names)
        for op, comparator in zip(node.ops, node.comparators):
            right = _evaluate(comparator, names)
            if type(op) not in _OPS or not _OPS[type(op)](left, right):
                return False
            left = right
        return True
    raise ValueError(f"unsupported expression {ast.dump(node)[:60]}")


def _compile_filter(path, key: str, text: str):
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as err:
        raise StudyError(path, key, f"cannot parse filter {text!r}: {err.msg}") from None
    return tree


def _expand_axes(path, where: str, axes: dict, zipped: dict) -> list[dict]:
    for name, values in {**axes, **zipped}.items():
        if not isinstance(values, list) or not values:
            raise StudyError(path, f"{where}.{name}", f"an axis needs a non-empty list of values, got {values!r}")
    lengths = {len(v) for v in zipped.values()}
    if len(lengths) > 1:
        raise StudyError(path, f"{where}.zip", f"zipped axes must have equal lengths, got {sorted(lengths)}")
    names = list(axes)
    product = [dict(zip(names, combo)) for combo in itertools.product(*(axes[n] for n in names))]
    if not zipped:
        return product
    zip_points = [dict(zip(zipped, combo)) for combo in zip(*zipped.values())]
    return [{**p, **z} for p in product for z in zip_points]


def load_study(name_or_path: str, profile: str = "cpu") -> Study:
    """Parse, validate and expand a study."""
    path = study_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise StudyError(path, "file", f"not valid YAML: {err}") from None
    _check_keys(path, "", raw, STUDY_KEYS)
    for required in ("name", "models", "adapters"):
        if required not in raw:
            raise StudyError(path, required, "missing; a study needs name, models and adapters")
    profiles = raw.get("profiles", {"cpu": {}})
    for pname, pdata in profiles.items():
        _check_profile(path, f"profiles.{pname}", pdata or {})
    if profile not in profiles:
        raise StudyError(path, "profiles", f"no profile {profile!r}; this study has {', '.join(profiles)}")
    budget = dict(profiles[profile] or {})
    jobs = budget.pop("jobs", 1)
    learning_rates = budget.pop("learning_rates", "validation")
    arms = budget.pop("arms", None)
    if learning_rates not in LEARNING_RATES:
        raise StudyError(path, f"profiles.{profile}.learning_rates", f"unknown value {learning_rates!r}; write "
                         "validation (search the study's rates on the validation split here) or reference (each "
                         "arm at the rate the reference machine's results chose)")
    _check_each(path, "tasks", raw.get("tasks") or [], check_task)
    tasks = raw.get("tasks") or [None]
    _check_each(path, "models", raw["models"], check_model)
    seeds = budget.pop("seeds", None) or raw.get("seeds", [0])
    shapes = budget.pop("shapes", None) or raw.get("shapes") or [{}]
    for i, shape in enumerate(shapes):
        _check_profile(path, f"shapes[{i}]", shape)
    adapter_points = _adapter_points(path, raw["adapters"])
    study_level = {key: raw[key] for key in ("measure", "target_modules") if key in raw}
    # a training trial counts no FLOPs: a training study that asks for them gets one counting trial per configuration;
    # one that asks for time also gets its configurations timed in turn (`_timing_trials`)
    counts_flops = bool(raw.get("tasks")) and "flops" in study_level.get("measure", [])
    times_steps = bool(raw.get("tasks")) and "time" in study_level.get("measure", [])
    if counts_flops:
        study_level["measure"] = [m for m in study_level["measure"] if m != "flops"]

    if raw.get("tasks") and any(p["method"] == NO_ADAPTER for p in adapter_points):
        raise StudyError(path, "adapters", f"method {NO_ADAPTER!r}: every training study gets the head-only control "
                                           "and the calibrated untouched model as references; remove this entry")
    trials, counting = [], []
    for model, task, shape, seed in itertools.product(raw["models"], tasks, shapes, seeds):
        points = [{"adapter": adapter, "lr": lr, "label": label}
                  for adapter, lr, label in _match_params(path, adapter_points, model, raw.get("target_modules"))]
        for point in points + (REFERENCE_ARMS if task else []):
            given = {**study_level, **budget, **shape, **point}
            trials.append(_trial(path, f"profiles.{profile}", kind="train" if task else "measure", model=model, task=task,
                                 seed=seed, profile=profile, **{k: v for k, v in given.items() if v is not None}))
        if (counts_flops or times_steps) and seed == min(seeds):
            counting += _flop_trials(path, f"profiles.{profile}", points, model, task, {**study_level, **budget, **shape},
                                   seed, profile)
    if not trials:
        raise StudyError(path, "adapters", "the grid is empty: no trial to run")
    ids = [t.id for t in trials]
    if len(set(ids)) != len(ids):
        raise StudyError(path, "adapters", "two grid points resolve to the same trial; remove the duplicate")
    counting = list({t.id: t for t in counting}.values())  # tasks of one shape share their counting trials
    if arms is not None:
        trials = _keep_arms(path, f"profiles.{profile}.arms", trials, arms)
        counting = [t for t in counting if t.arm in arms]
    trials += counting if counts_flops else []
    if times_steps:
        trials += _timing_trials(path, f"profiles.{profile}", counting,
                                 {k: budget[k] for k in ("repeats", "timing_warmup") if k in budget})
    return Study(raw["name"], raw.get("description", ""), path, raw, trials, jobs, learning_rates)


def _flop_trials(path, profile_key: str, points, model, task, given, seed, profile) -> list[TrialConfig]:
    """The FLOPs of one training step of each adapter configuration, counted by a measure trial at the training
    step's shape: `batch` examples, each as many sequences of `seq_len` tokens as the task's scoring puts through
    the model (every sequence padded to `seq_len`, so an upper bound). The references get none: a measure trial
    without an adapter trains the whole model, which neither reference does."""
    sequences = sequences_per_example(TASKS[task], is_decoder(model), given.get("pooling"))
    shape = {"batch": given.get("batch", TrialConfig.batch) * sequences, "seq_len": given.get("seq_len")}
    kept = {k: given[k] for k in ("target_modules", "pooling", "device", "dtype", "threads", "timeout_s", "memory_limit_gb")
            if given.get(k) is not None}
    configurations = {p["adapter"].text: p for p in points if p["adapter"] is not None}
    return [_trial(path, profile_key, kind="measure", model=model, seed=seed, profile=profile, measure=["flops"],
                   adapter=p["adapter"], label=p["label"], **kept, **{k: v for k, v in shape.items() if v is not None})
            for p in configurations.values()]


def _timing_trials(path, profile_key: str, counting: list[TrialConfig], timing: dict) -> list[TrialConfig]:
    """A training study that measures time also gets, per step shape (the counting trials' settings but the
    adapter), one interleaved trial: every adapter configuration's training step timed in turn (A, B, C, A, B, C,
    ...) in one process, at the shape the counting trials (`_flop_trials`) count, so that a machine shared with
    other trials slows all of them alike; `timing`: the profile's repeats and timing_warmup, if it sets them. The
    training trials' own step times (means over their runs) stay beside it."""
    groups: dict[str, list[TrialConfig]] = {}
    for trial in counting:
        groups.setdefault(dataclasses.replace(trial, adapter=None, label=None).id, []).append(trial)
    try:
        return [dataclasses.replace(group[0], kind="interleaved", adapter=None, label=None, measure=("time",),
                                    adapters=tuple(t.adapter for t in group), **timing) for group in groups.values()]
    except TrialConfigError as err:
        raise StudyError(path, f"{profile_key}.{err.key}", err.reason) from None


def _keep_arms(path: Path, key: str, trials: list[TrialConfig], arms: list) -> list[TrialConfig]:
    """The trials of the named adapter arms, and the references (which every training study runs)."""
    known = sorted({t.arm for t in trials if t.adapter is not None})
    for arm in arms:
        if arm not in known:
            raise StudyError(path, key, f"no arm {arm!r} in this study.{did_you_mean(arm, known)} Its arms, as the "
                                        f"results name them: {', '.join(known)}")
    return [t for t in trials if t.adapter is None or t.arm in arms]


def _trial(path, profile_key: str, **config) -> TrialConfig:
    try:
        return TrialConfig(**config)
    except TrialConfigError as err:
        where = {"model": "models", "task": "tasks", "seed": "seeds", "measure": "measure", "lr": "adapters",
                 "label": "adapters", "target_modules": "target_modules"}.get(err.key, f"{profile_key}.{err.key}")
        raise StudyError(path, where, err.reason) from None


def _check_each(path, key: str, values, check) -> None:
    for value in values:
        if not isinstance(value, str):
            raise StudyError(path, key, f"expected names, got {value!r}")
        try:
            check(value)
        except TrialConfigError as err:
            raise StudyError(path, key, err.reason) from None


def _adapter_points(path, entries) -> list[dict]:
    """Each entry's expanded points: the spec (None for the control), lr, label, and what it is matched to."""
    points = []
    for i, entry in enumerate(entries):
        where = f"adapters[{i}]"
        _check_keys(path, where, entry, ADAPTER_KEYS)
        method = entry.get("method")
        if not method:
            raise StudyError(path, f"{where}.method", "missing")
        try:
            make_adapter(method)
        except ValueError as err:
            raise StudyError(path, f"{where}.method", str(err)) from None
        grid = _expand_axes(path, where, entry.get("axes", {}), entry.get("zip", {}))
        filters = [(text, _compile_filter(path, f"{where}.where", text)) for text in entry.get("where", [])]
        kept = []
        for point in grid:
            try:
                if all(_evaluate(tree, point) for _, tree in filters):
                    kept.append(point)
            except KeyError as err:
                raise StudyError(path, f"{where}.where", f"unknown axis {err.args[0]!r} in filter; axes are "
                                 f"{', '.join(point)}") from None
        if grid and not kept:
            raise StudyError(path, f"{where}.where", f"the filters {[t for t, _ in filters]} remove every point")
        for point in kept:
            try:
                spec = make_adapter(method, point)
            except ValueError as err:
                raise StudyError(path, f"{where}.axes", str(err)) from None
            for lr in entry.get("lr", [None]):
                points.append({"spec": spec, "point": point, "method": method, "lr": lr, "entry": i,
                               "label": entry.get("label"), "match": entry.get("match")})
    return points


@dataclass(frozen=True)
class Match:
    """One row of a study's parameter plan: an entry's configuration and its trainable count on the model, and,
    for a `match` entry, the configuration it was matched to and that one's count. `error`: why PEFT cannot
    build it on the model (its count is then None; the trial runs and fails with that reason)."""
    entry: int
    spec: AdapterSpec
    knob: dict  # the entry's axes at this point; empty: the method's own size
    params: int | None
    anchor: AdapterSpec | None = None
    anchor_params: int | None = None
    error: str = ""


def _counted(model, targets, spec) -> tuple[int | None, str]:
    try:
        return adapter_params(model, targets, spec), ""
    except AdapterBuildError as err:
        return None, str(err)


def _distinct(points) -> list[dict]:
    """One point per configuration (an entry lists each of its configurations once per learning rate)."""
    seen, out = set(), []
    for p in points:
        if p["spec"].text not in seen:
            seen.add(p["spec"].text)
            out.append(p)
    return out


def parameter_plan(path, points, model, targets) -> list[Match]:
    """Every configuration the study runs on `model`, with its trainable count; a `match` entry keeps, per
    configuration of the method it names, the candidate nearest in that count (ties: the smaller knob values).
    A candidate PEFT cannot build is never chosen; when none can be built the entry keeps its first, so that
    its trial records the failure."""
    plan = [Match(p["entry"], p["spec"], p["point"], *_counted(model, targets, p["spec"]))
            for p in _distinct(p for p in points if not p["match"])]
    unmatched = list(plan)
    for entry in sorted({p["entry"] for p in points if p["match"]}):
        candidates = _distinct(p for p in points if p["entry"] == entry)
        where, source = f"adapters[{entry}]", candidates[0]["match"]
        method = candidates[0]["method"]
        if not candidates[0]["point"]:
            raise StudyError(path, f"{where}.match", f"matching chooses a value of {method}'s size knob: give its axes "
                             f"(e.g. axes: {{r: [1, 2, 4, 8]}}), or drop match to run {method} at its own size")
        if not any(m.spec.method == source for m in unmatched):
            raise StudyError(path, f"{where}.match", f"nothing to match: no unmatched {source!r} entry")
        counted = [(c, *_counted(model, targets, c["spec"])) for c in candidates]
        built = [(c, n) for c, n, _ in counted if n is not None]
        if len({n for _, n in built}) == 1 and len(built) > 1:
            raise StudyError(path, f"{where}.axes", f"its axes ({', '.join(candidates[0]['point'])}) do not change {method}'s "
                             f"trainable parameters on {model} ({built[0][1]:,} at every point): not a size knob")
        anchors = [m for m in unmatched if m.spec.method == source and m.params is not None]
        if not built or not anchors:
            first, _, error = counted[0]
            plan.append(Match(entry, first["spec"], first["point"], None,
                              error=error or f"no {source} configuration can be built on {model} to match"))
            continue
        for anchor in anchors:
            nearest, count = min(built, key=lambda cn: (abs(cn[1] - anchor.params), sorted(cn[0]["point"].items())))
            plan.append(Match(entry, nearest["spec"], nearest["point"], count, anchor.spec, anchor.params))
    return sorted(plan, key=lambda m: m.entry)


def _match_params(path, points, model, targets):
    """Resolves `match` entries (parameter_plan): every learning rate of each configuration kept."""
    resolved = [(p["spec"], p["lr"], p["label"]) for p in points if not p["match"]]
    if not any(p["match"] for p in points):
        return resolved
    kept = {(m.entry, m.spec.text) for m in parameter_plan(path, points, model, targets)}
    return resolved + [(p["spec"], p["lr"], p["label"]) for p in points
                       if p["match"] and (p["entry"], p["spec"].text) in kept]


def study_parameter_plan(study: Study) -> dict[str, list[Match]]:
    """Each model's parameter plan for a loaded study (what `run --dry-run` prints); counts are cached."""
    points = _adapter_points(study.path, study.raw["adapters"])
    return {model: parameter_plan(study.path, points, model, study.raw.get("target_modules"))
            for model in study.raw["models"]}
