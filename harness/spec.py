"""Study files (studies/*.yaml) -> a validated Study -> trials.

A study file declares models, tasks, adapters with the axes each sweeps, target modules, learning
rates and seeds, the training budget per named profile, and which measurements to take. Axes
expand as a Cartesian product; `zip` groups expand together; `where` filters drop points. A LoRA
entry with `match: more` keeps, for each MoRe configuration, only the rank whose trainable-parameter
count is nearest (closed forms on the model's real layer sizes, before anything runs).

Everything is checked before anything runs; an error names the file, the key and the reason.
"""
from __future__ import annotations

import ast
import difflib
import hashlib
import itertools
import json
import operator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .adapters import AdapterSpec, config_class

STUDIES_DIR = Path(__file__).resolve().parents[1] / "studies"
# Part of every trial id: bump when a trial's protocol changes meaning, so old results are not reused.
TRIAL_PROTOCOL = 1
MEASUREMENTS = ("params", "flops", "memory", "time")

STUDY_KEYS = {"name": str, "description": str, "models": list, "tasks": list, "adapters": list,
              "target_modules": list, "seeds": list, "measure": list, "profiles": dict, "shapes": list}
ADAPTER_KEYS = {"method": str, "axes": dict, "zip": dict, "where": list, "lr": list, "match": str, "label": str}
PROFILE_KEYS = {"steps": int, "batch": int, "seq_len": int, "eval_every": int, "eval_examples": int,
                "train_examples": int, "warmup_ratio": float, "weight_decay": float, "max_grad_norm": float,
                "seeds": list, "repeats": int, "timeout_s": int, "memory_limit_gb": float, "device": str,
                "dtype": str, "threads": int, "shapes": list, "pooling": str, "prompt_style": str, "jobs": int}


class StudyError(ValueError):
    """A bad study file: says which file, which key and why."""

    def __init__(self, path, key: str, reason: str):
        super().__init__(f"{path}: {key}: {reason}")


@dataclass(frozen=True)
class Trial:
    """One grid point, fully resolved: a pure function of this config."""

    study: str
    config: dict

    @property
    def id(self) -> str:
        canonical = json.dumps({"protocol": TRIAL_PROTOCOL, **self.config}, sort_keys=True, default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def adapter(self) -> AdapterSpec | None:
        method = self.config.get("adapter")
        return None if method in (None, "none") else AdapterSpec.make(method, self.config["adapter_params"])


@dataclass
class Study:
    name: str
    description: str
    path: Path
    raw: dict
    trials: list[Trial] = field(default_factory=list)
    jobs: int = 1  # trials at a time the profile suggests (--jobs overrides); not part of any trial


def study_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    candidate = STUDIES_DIR / f"{name_or_path}.yaml"
    if candidate.exists():
        return candidate
    known = sorted(p.stem for p in STUDIES_DIR.glob("*.yaml"))
    hint = difflib.get_close_matches(name_or_path, known, n=1)
    raise StudyError(name_or_path, "study", f"no such study file.{' Did you mean ' + repr(hint[0]) + '?' if hint else ''} "
                     f"Known studies: {', '.join(known)}.")


def _check_keys(path, where: str, data: dict, allowed: dict) -> None:
    if not isinstance(data, dict):
        raise StudyError(path, where, f"expected a mapping, got {type(data).__name__}")
    for key, value in data.items():
        if key not in allowed:
            hint = difflib.get_close_matches(key, list(allowed), n=1)
            raise StudyError(path, f"{where}.{key}" if where else key,
                             f"unknown key.{' Did you mean ' + repr(hint[0]) + '?' if hint else ''} "
                             f"Allowed: {', '.join(allowed)}")
        expected = allowed[key]
        ok = isinstance(value, expected) or (expected is float and isinstance(value, int) and not isinstance(value, bool))
        if not ok:
            raise StudyError(path, f"{where}.{key}" if where else key,
                             f"expected {expected.__name__}, got {type(value).__name__} ({value!r})")


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


def load_study(name_or_path: str, profile: str = "cpu", layer_dims=None) -> Study:
    """Parse, validate and expand a study. `layer_dims(model, target_modules)` gives the (in, out) sizes of
    the adapted layers, for parameter matching and the dry-run's closed-form counts."""
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
        _check_keys(path, f"profiles.{pname}", pdata or {}, PROFILE_KEYS)
    if profile not in profiles:
        raise StudyError(path, "profiles", f"no profile {profile!r}; this study has {', '.join(profiles)}")
    budget = dict(profiles[profile] or {})
    jobs = budget.pop("jobs", 1)
    measure = raw.get("measure", list(MEASUREMENTS))
    for m in measure:
        if m not in MEASUREMENTS:
            raise StudyError(path, "measure", f"unknown measurement {m!r}; choose from {', '.join(MEASUREMENTS)}")
    tasks = raw.get("tasks") or [None]
    _check_tasks(path, tasks)
    _check_models(path, raw["models"])
    seeds = budget.pop("seeds", None) or raw.get("seeds", [0])
    shapes = budget.pop("shapes", None) or raw.get("shapes") or [{}]
    for i, shape in enumerate(shapes):
        _check_keys(path, f"shapes[{i}]", shape, PROFILE_KEYS)
    adapter_points = _adapter_points(path, raw["adapters"])

    trials = []
    for model, task, shape, seed in itertools.product(raw["models"], tasks, shapes, seeds):
        targets = raw.get("target_modules")
        points = _match_params(path, adapter_points, model, targets, layer_dims)
        for method, params, lr, label in points:
            config = {"model": model, "task": task, "adapter": method, "adapter_params": params,
                      "target_modules": targets, "lr": lr, "seed": seed, "measure": measure,
                      "profile": profile, **budget, **shape}
            if label:
                config["label"] = label
            trials.append(Trial(raw["name"], config))
    if not trials:
        raise StudyError(path, "adapters", "the grid is empty: no trial to run")
    ids = [t.id for t in trials]
    if len(set(ids)) != len(ids):
        raise StudyError(path, "adapters", "two grid points resolve to the same trial; remove the duplicate")
    return Study(raw["name"], raw.get("description", ""), path, raw, trials, jobs)


def _check_models(path, models) -> None:
    from .models import MODELS, PAPER_SUFFIX

    for model in models:
        if not isinstance(model, str):
            raise StudyError(path, "models", f"expected model names, got {model!r}")
        if model not in MODELS and "/" not in model and not model.endswith(PAPER_SUFFIX):
            hint = difflib.get_close_matches(model, list(MODELS), n=1)
            raise StudyError(path, "models", f"unknown model {model!r}.{' Did you mean ' + repr(hint[0]) + '?' if hint else ''} "
                             f"Registered: {', '.join(MODELS)}; or a hub id owner/name")


def _check_tasks(path, tasks) -> None:
    from .tasks import TASKS

    for task in tasks:
        if task is not None and task not in TASKS:
            hint = difflib.get_close_matches(str(task), list(TASKS), n=1)
            raise StudyError(path, "tasks", f"unknown task {task!r}.{' Did you mean ' + repr(hint[0]) + '?' if hint else ''} "
                             f"Known: {', '.join(TASKS)}")


def _adapter_points(path, entries) -> list[dict]:
    """Each entry's expanded points: method, params, lr, label, and whether it is parameter-matched."""
    points = []
    for i, entry in enumerate(entries):
        where = f"adapters[{i}]"
        _check_keys(path, where, entry, ADAPTER_KEYS)
        method = entry.get("method")
        if not method:
            raise StudyError(path, f"{where}.method", "missing")
        if method != "none":
            try:
                config_class(method)
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
            if method != "none":
                try:
                    AdapterSpec.make(method, point)
                except ValueError as err:
                    raise StudyError(path, f"{where}.axes", str(err)) from None
            for lr in entry.get("lr", [None]):
                points.append({"method": method, "params": point, "lr": lr, "label": entry.get("label"),
                               "match": entry.get("match"), "entry": i})
    return points


def _match_params(path, points, model, targets, layer_dims):
    """Resolves `match` entries: for each point of the matched method, the candidate nearest in parameters."""
    resolved = [(p["method"], _full_params(p), p["lr"], p["label"]) for p in points if not p["match"]]
    matched = [p for p in points if p["match"]]
    if not matched:
        return resolved
    if layer_dims is None:
        raise StudyError(path, "adapters.match", "parameter matching needs the model's layer sizes")
    dims = layer_dims(model, targets)
    count = lambda method, params: AdapterSpec.make(method, params).closed_form_params(dims)  # noqa: E731
    for source in {p["match"] for p in matched}:
        anchors = [p for p in points if p["method"] == source and not p["match"]]
        if not anchors:
            raise StudyError(path, "adapters.match", f"nothing to match: no unmatched {source!r} entry")
        candidates = [p for p in matched if p["match"] == source]
        chosen = []
        for anchor in anchors:
            target = count(source, anchor["params"])
            nearest = min(candidates, key=lambda c: (abs(count(c["method"], c["params"]) - target), sorted(c["params"].items())))
            for c in candidates:  # every learning rate of the nearest configuration
                if c["params"] == nearest["params"] and c not in chosen:
                    chosen.append(c)
        resolved += [(c["method"], _full_params(c), c["lr"], c["label"]) for c in chosen]
    return resolved


def _full_params(point) -> dict:
    return {} if point["method"] == "none" else AdapterSpec.make(point["method"], point["params"]).params
