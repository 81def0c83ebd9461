"""The short fine-tune and evaluation of a training trial.

One code path serves every adapter: the adapter is a PEFT config, and nothing here branches on its type;
how a model scores a task is `harness.scoring`'s.

- Optimizer: AdamW, linear warm-up then cosine decay, gradient clipping. Two parameter groups: the adapter at
  the trial's `lr`, and the new head (`classifier`/`score`) at `head_lr`, one rate for every arm, so that no arm
  gets more room to calibrate its head than another.
- Paired arms: the training examples come in an order fixed by the trial's seed, the same for every adapter, and
  the random stream is reseeded after the adapter is built, so dropout masks are the same too.
- Splits: the validation split is evaluated at step 0, every `eval_every` steps and at the end (every choice is
  made on it); the test split at the end only. With `eval_every`, the step is chosen on validation too: the
  trainable state of the best evaluation (`BestState`) is restored before the final evaluation, and
  `chosen_step` says which it was. Rows are named by split: `val_loss`, `val_<metric>`,
  `test_loss`, `test_loss_se`, `test_<metric>`, `test_<metric>_se`; `chance_<metric>` is the test split's chance
  (majority class or 1/options). Each evaluated example's outputs come back too (`split, example_id, label,
  prediction, correct, loss`), so that arms can be compared example by example (`harness.stats`).
- `calibrate`: the calibrated untouched model, a reference: nothing trains by gradient steps; the head is
  fitted to convergence on the train split with the model frozen (`harness.calibrate`).
- `max_epochs` caps the steps at that many passes over the train split.

Parameters are always reported (the trial needs them); the peak memory and the training time only when the
trial's `measure` names memory and time. The time of a step excludes building its batch (tokenisation).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict

import torch

from . import metrics as M
from .calibrate import L2_GRID, fit_head_on_validation, head_inputs, head_of
from .measure import memory
from .measure.params import parameter_rows
from .measure.records import Measurement, not_measured
from .prepare import prepare_model
from .scoring import DecoderScoring, EncoderScoring
from .tasks import load_task
from .trial import TrialConfig

HEAD_NAMES = ("classifier", "score")
SPLIT_PREFIX = {"validation": "val", "test": "test"}


def lr_at(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def row(metric, value, unit, step=None, scope="", note="") -> dict:
    """A Measurement as the dict a trial returns."""
    return Measurement(metric, float(value), unit, step, scope, note).as_dict()


def evaluate(task, scoring, model, examples, batch_size, split: str, step: int | None) -> tuple[list[dict], list[dict]]:
    """The rows of one split at `step` (None: the final values), and each example's outputs."""
    model.eval()
    predictions, losses = scoring.evaluate(model, examples, batch_size)
    model.train()
    prefix, labels = SPLIT_PREFIX[split], [e.label for e in examples]
    rows = [row(f"{prefix}_loss", sum(losses) / len(losses), "nats", step),
            row(f"{prefix}_loss_se", M.standard_error_of_mean(losses), "nats", step)]
    for name, value in task.score(predictions, labels, with_se=True).items():
        rows.append(row(f"{prefix}_{name}", value, "ratio", step))
    if scoring.__class__ is DecoderScoring and scoring.length_normalised:
        rows.append(row(f"{prefix}_accuracy_length_normalised", M.accuracy(scoring.length_normalised, labels), "ratio", step))
    outputs = [{"split": split, "example_id": e.uid, "label": e.label, "prediction": p,
                "correct": task.is_correct(p, e.label), "loss": loss} for e, p, loss in zip(examples, predictions, losses)]
    return rows, outputs


def optimizer_groups(model, config: TrialConfig) -> list[dict]:
    """The adapter at `lr`, the new head at `head_lr`; empty groups left out."""
    adapter, head = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (head if any(part in HEAD_NAMES for part in name.split(".")) else adapter).append(parameter)
    groups = [{"params": adapter, "lr": config.lr}, {"params": head, "lr": config.head_lr}]
    return [g for g in groups if g["params"]]


def calibrate_head(task, scoring, model, config: TrialConfig, validation) -> list[dict]:
    """The calibrated untouched model: the head fitted on the frozen model's train-split outputs, its L2 penalty
    chosen on the validation split (harness.calibrate)."""
    try:
        head = head_of(model)
    except ValueError:
        return [row("calibrated_train_loss", math.nan, "nats", note="no head to fit: the untouched model")]
    regression = task.kind == "regression"

    def cached(examples) -> tuple:
        inputs = head_inputs(model, lambda: scoring.evaluate(model, examples, config.batch))
        labels = torch.tensor([e.label for e in examples], dtype=torch.float if regression else torch.long)
        return inputs, labels.to(inputs[0][0].device)

    fit = fit_head_on_validation(head, cached(task.train(seed=config.seed, limit=config.train_examples)),
                                 cached(validation), regression)
    return [row("calibrated_train_loss", fit["train_loss"], "nats"),
            row("calibrated_l2", fit["l2"], "", note="chosen on validation from " + ", ".join(map(str, L2_GRID)))]


def fine_tune(config: TrialConfig) -> tuple[list[dict], dict, list[dict]]:
    device = torch.device(config.device)
    task = load_task(config.task)
    started = time.perf_counter()
    model, tokenizer, info = prepare_model(config, config.adapter, task)  # new heads train via modules_to_save
    torch.manual_seed(config.seed)  # the same dropout masks for every arm, however much randomness its init used
    scoring = (DecoderScoring(task, tokenizer, config.seq_len, device, config.prompt_style) if info.head == "causal_lm"
               else EncoderScoring(task, tokenizer, config.seq_len, device, info.pooling))
    rows = [m.as_dict() for m in parameter_rows(model, config.adapter is not None)]
    rows += [row(f"chance_{name}", value, "ratio", note="majority class of train" if task.kind != "multiple_choice"
                 else "1 / options") for name, value in task.chance("test").items()]
    baseline_rss = memory.current_rss()
    load_seconds = time.perf_counter() - started
    validation = task.split("validation", config.validation_examples)
    test = task.split("test", config.test_examples)
    batch_size = config.batch

    first = evaluate(task, scoring, model, validation, batch_size, "validation", step=0)[0]
    rows += first
    curve = bool(config.eval_every) and not config.calibrate  # the validation curve then ends at its own last step
    if config.calibrate:
        rows += calibrate_head(task, scoring, model, config, validation)
        steps = chosen = 0
    else:
        trained, chosen = train_steps(task, scoring, model, config, validation, baseline_rss, first)
        rows += trained
        steps = planned_steps(config, task)
    outputs = []
    for split, examples in (("validation", validation), ("test", test)):
        final, split_outputs = evaluate(task, scoring, model, examples, batch_size, split, step=None)
        rows += final  # the final values, and again at their step unless the validation curve has that point
        rows += [dict(r, step=chosen) for r in final if split == "test" or not curve]
        outputs += split_outputs
    info = {"model_info": asdict(info), "load_seconds": load_seconds, "steps": steps,
            "examples": {"validation": len(validation), "test": len(test)}, "device": str(device),
            "adapter": config.adapter.label if config.adapter else None}
    return rows, info, outputs


def planned_steps(config: TrialConfig, task) -> int:
    if config.max_epochs is None:
        return config.steps
    train = len(task.train(limit=config.train_examples))
    return max(1, min(config.steps, math.ceil(config.max_epochs * train / config.batch)))


class BestState:
    """The trainable state at the best validation evaluation so far: the task's first metric, higher is better,
    then the lower validation loss (as learning rates are chosen), then the earlier step; NaN counts as worst.
    The state is copied into buffers made once, on the CPU, so that a GPU's peak memory does not count them."""

    def __init__(self, parameters: list[torch.Tensor], metric: str):
        self.parameters = parameters
        self.saved = [torch.empty_like(p, device="cpu") for p in self.parameters]
        self.metric, self.key, self.step = f"val_{metric}", None, None

    def offer(self, rows: list[dict], step: int) -> None:
        values = {r["metric"]: r["value"] for r in rows}
        key = tuple(-math.inf if math.isnan(v) else v for v in (values[self.metric], -values["val_loss"]))
        if self.key is None or key > self.key:
            self.key, self.step = key, step
            with torch.no_grad():
                for saved, parameter in zip(self.saved, self.parameters):
                    saved.copy_(parameter)

    def restore(self) -> None:
        with torch.no_grad():
            for parameter, saved in zip(self.parameters, self.saved):
                parameter.copy_(saved)


def train_steps(task, scoring, model, config: TrialConfig, validation, baseline_rss,
                first: list[dict]) -> tuple[list[dict], int]:
    """The training rows, and the step whose state the model ends in: the last, or with `eval_every` the one
    with the best validation metric (`first`: the step-0 evaluation's rows)."""
    device, steps, batch_size = torch.device(config.device), planned_steps(config, task), config.batch
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError(f"Nothing to train: {config.model} with no adapter has no new head on task {task.name!r}. "
                         "Give an adapter, or a task with a classification or multiple-choice head.")
    optimizer = torch.optim.AdamW(optimizer_groups(model, config), weight_decay=config.weight_decay)
    warmup = max(1, int(config.warmup_ratio * steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, steps, warmup))
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.dtype)
    train_examples = task.train(seed=config.seed, limit=config.train_examples)
    best = BestState(trainable, task.metrics[0]) if config.eval_every else None
    if best:
        best.offer(first, 0)
    model.train()
    memory.reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rows, tokens, train_seconds = [], 0, 0.0
    for step in range(1, steps + 1):
        start = (step - 1) * batch_size % len(train_examples)
        batch, n_tokens = scoring.batch((train_examples + train_examples)[start:start + batch_size])
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None and device.type == "cuda"):
            loss = scoring.loss(model, batch)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_seconds += time.perf_counter() - t0
        tokens += n_tokens
        rows.append(row("train_loss", loss.item(), "nats", step))
        rows.append(row("grad_norm", float(grad_norm), "norm", step))
        if best and (step % config.eval_every == 0 or step == steps):
            evaluated = evaluate(task, scoring, model, validation, batch_size, "validation", step=step)[0]
            best.offer(evaluated, step)
            rows += evaluated
    if "memory" in config.measure:
        rows += training_memory_rows(device, baseline_rss)
    if "time" in config.measure:
        rows.append(row("train_time_s", train_seconds, "s", note="gradient steps only, batches built outside"))
        rows.append(row("time_step_s", train_seconds / steps, "s", note="mean over the training run"))
        rows.append(row("tokens_per_s", tokens / train_seconds, "tokens/s"))
    if "flops" in config.measure:
        rows.append(not_measured("flops_forward", "flops", "a training trial counts no FLOPs; name flops in the "
                                                           "study's measure list and the study counts them in a "
                                                           "measure trial per adapter").as_dict())
    if not best:
        return rows, steps
    best.restore()
    rows.append(row("chosen_step", best.step, "step", note=f"the best {best.metric} (then val_loss) of the "
                                                           f"evaluations every {config.eval_every} steps; the "
                                                           "test split is evaluated in that state"))
    return rows, best.step


def training_memory_rows(device: torch.device, baseline_rss: int) -> list[dict]:
    """The peak memory of the training loop: the CUDA allocator's on a GPU, the process's RSS on a CPU."""
    if device.type == "cuda":
        return [row("peak_memory_allocated_bytes", torch.cuda.max_memory_allocated(device), "bytes"),
                row("peak_memory_reserved_bytes", torch.cuda.max_memory_reserved(device), "bytes")]
    peak = memory.peak_rss()
    return [row("peak_rss_bytes", peak, "bytes"),
            row("train_rss_bytes", peak - baseline_rss, "bytes", note="peak during training minus after load")]
