"""The short fine-tune and evaluation of a training trial.

One code path serves every adapter: the adapter is a PEFT config, and nothing here branches on its
type. What differs is how a model scores a task's examples:

- encoders (MiniLM): a classification head for classification tasks, a multiple-choice head for
  multiple-choice tasks; cross-entropy on the label;
- decoders (SmolLM2): the task's prompt, and the log-likelihood of each option's continuation. The
  loss is the right continuation's tokens only; the prediction is the option of highest likelihood
  (summed over tokens, and per token for `length_normalised`).

AdamW, linear warm-up then cosine decay, gradient clipping and a fixed seed. The training examples
come in an order fixed by the trial's seed, the same for every adapter, so comparisons are paired.
Every `eval_every` steps and at the end the held-out loss and the task metric are measured, with
their standard errors from the evaluation set (the mean loss's s/sqrt(n), the metric's bootstrap).
Step 0 is the untrained model with the same head: the baseline the loss must improve on; the
metric's baseline is the task's majority class or chance.

Parameters are always reported (the trial needs them); the peak memory and the training time only
when the trial's `measure` names memory and time. FLOPs are counted by measure trials: a training
trial asked for them reports them as not measured.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict

import torch
from torch import nn

from . import metrics as M
from .measure import memory
from .measure.params import parameter_rows
from .measure.records import Measurement, not_measured
from .prepare import prepare_model
from .tasks import load_task
from .trial import TrialConfig


# ---- batches ------------------------------------------------------------------------------------

def encoder_batch(tokenizer, task, examples, seq_len, device, pooling=None):
    labels = torch.tensor([e.label for e in examples], dtype=torch.float if task.kind == "regression" else torch.long)
    if pooling == "biencoder":  # the question and each option encoded apart
        choices = [task.encoder_choices(e) for e in examples]
        questions = tokenizer([c[0][0] for c in choices], truncation=True, max_length=seq_len, padding=True,
                              return_tensors="pt")
        options = tokenizer([o for c in choices for _, o in c], truncation=True, max_length=seq_len, padding=True,
                            return_tensors="pt")
        batch = {"input_ids": questions["input_ids"], "attention_mask": questions["attention_mask"],
                 "option_input_ids": options["input_ids"].view(len(examples), task.num_classes, -1),
                 "option_attention_mask": options["attention_mask"].view(len(examples), task.num_classes, -1),
                 "labels": labels}
        return {k: v.to(device) for k, v in batch.items()}
    if task.kind == "multiple_choice":
        pairs = [pair for e in examples for pair in task.encoder_choices(e)]
        enc = tokenizer([p[0] for p in pairs], [p[1] for p in pairs], truncation="only_first", max_length=seq_len,
                        padding=True, return_tensors="pt")
        options = task.num_classes
        enc = {k: v.view(len(examples), options, -1) for k, v in enc.items()}
    else:
        texts = [task.encoder_input(e) for e in examples]
        pair = [t[1] for t in texts] if all(t[1] is not None for t in texts) else None
        enc = tokenizer([t[0] for t in texts], pair, truncation=True, max_length=seq_len, padding=True,
                        return_tensors="pt")
    return {**{k: v.to(device) for k, v in enc.items()}, "labels": labels.to(device)}


def decoder_sequences(tokenizer, prompt_text: str, continuation: str, seq_len: int) -> tuple[list[int], int]:
    """Token ids of prompt + continuation, the prompt cut from the left to fit; and the continuation's length."""
    cont = tokenizer(continuation, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    prompt = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    prompt = prompt[max(0, len(prompt) + len(cont) - seq_len):]
    return prompt + cont, len(cont)


def decoder_batch(tokenizer, sequences: list[tuple[list[int], int]], device):
    """Right-padded ids, mask, and labels that are -100 except on each continuation."""
    width = max(len(ids) for ids, _ in sequences)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids = torch.full((len(sequences), width), pad)
    labels = torch.full((len(sequences), width), -100)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, (ids, n_cont) in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        mask[row, : len(ids)] = 1
        labels[row, len(ids) - n_cont: len(ids)] = torch.tensor(ids[-n_cont:])
    return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def continuation_logprobs(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence: summed log-probability of its continuation tokens, and their count."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    targets = batch["labels"][:, 1:]
    keep = targets != -100
    logprobs = torch.log_softmax(logits, dim=-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logprobs * keep).sum(-1), keep.sum(-1)


# ---- how encoders and decoders score a task ------------------------------------------------------------------------------

class EncoderScoring:
    def __init__(self, task, tokenizer, seq_len, device, pooling=None):
        self.task, self.tokenizer, self.seq_len, self.device, self.pooling = task, tokenizer, seq_len, device, pooling

    def _batch(self, examples):
        return encoder_batch(self.tokenizer, self.task, examples, self.seq_len, self.device, self.pooling)

    def train_loss(self, model, examples) -> tuple[torch.Tensor, int]:
        batch = self._batch(examples)
        tokens = sum(int(v.sum()) for k, v in batch.items() if k.endswith("attention_mask"))
        return model(**batch).loss, tokens

    @torch.no_grad()
    def evaluate(self, model, examples, batch_size) -> tuple[list, list[float]]:
        predictions, losses = [], []
        for i in range(0, len(examples), batch_size):
            batch = self._batch(examples[i:i + batch_size])
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
            if self.task.kind == "regression":
                predictions += logits.squeeze(-1).tolist()
                losses += ((logits.squeeze(-1) - batch["labels"]) ** 2).tolist()
            else:
                predictions += logits.argmax(-1).tolist()
                losses += nn.functional.cross_entropy(logits, batch["labels"], reduction="none").tolist()
        return predictions, losses


class DecoderScoring:
    def __init__(self, task, tokenizer, seq_len, device, style):
        self.task, self.tokenizer, self.seq_len, self.device, self.style = task, tokenizer, seq_len, device, style

    def _sequences(self, example, which=None):
        prompt = self.task.decoder_prompt(example, style=self.style)
        options = range(len(prompt.continuations)) if which is None else [prompt.target]
        return [decoder_sequences(self.tokenizer, prompt.text, prompt.continuations[o], self.seq_len) for o in options], prompt.target

    def train_loss(self, model, examples) -> tuple[torch.Tensor, int]:
        sequences = [self._sequences(e, which="target")[0][0] for e in examples]
        batch = decoder_batch(self.tokenizer, sequences, self.device)
        return model(**batch).loss, int(batch["attention_mask"].sum())

    @torch.no_grad()
    def evaluate(self, model, examples, batch_size) -> tuple[list, list[float]]:
        predictions, losses, normalised = [], [], []
        for i in range(0, len(examples), batch_size):
            chunk = [self._sequences(e) for e in examples[i:i + batch_size]]
            flat = [s for sequences, _ in chunk for s in sequences]
            total, count = continuation_logprobs(model, decoder_batch(self.tokenizer, flat, self.device))
            start = 0
            for sequences, target in chunk:
                n = len(sequences)
                summed, per_token = total[start:start + n], total[start:start + n] / count[start:start + n]
                predictions.append(int(summed.argmax()))
                normalised.append(int(per_token.argmax()))
                losses.append(float(-per_token[target]))  # the right answer's mean token loss
                start += n
        self.length_normalised = normalised
        return predictions, losses


# ---- the loop ------------------------------------------------------------------------------------

def lr_at(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def evaluate(task, scoring, model, examples, batch_size, step) -> tuple[list[dict], list[float], dict]:
    """The held-out rows at `step`, the per-example losses, and the metric values."""
    model.eval()
    predictions, losses = scoring.evaluate(model, examples, batch_size)
    model.train()
    labels = [e.label for e in examples]
    rows = [row("eval_loss", sum(losses) / len(losses), "nats", step),
            row("eval_loss_se", M.standard_error_of_mean(losses), "nats", step)]
    scores = task.score(predictions, labels, with_se=True)
    for name, value in scores.items():
        rows.append(row(f"eval_{name}", value, "ratio", step))
    if isinstance(scoring, DecoderScoring):
        rows.append(row("eval_accuracy_length_normalised", M.accuracy(scoring.length_normalised, labels), "ratio", step))
    return rows, losses, scores


def learning_signal_rows(task, losses_before, losses_after, scores_after, baseline) -> list[dict]:
    """Did training move the held-out loss and the task metric? Each margin in units of its standard
    error from the evaluation set: the loss drop's from the paired per-example differences, the metric's
    margin over the untrained baseline (majority class or chance) from its bootstrap."""
    drops = [b - a for b, a in zip(losses_before, losses_after)]
    drop, drop_se = sum(drops) / len(drops), M.standard_error_of_mean(drops)
    rows = [row("eval_loss_drop", drop, "nats"), row("eval_loss_drop_se", drop_se, "nats"),
            row("eval_loss_drop_in_se", drop / drop_se if drop_se else math.nan, "se")]
    passed = drop > 2 * drop_se
    for name in task.metrics:
        margin, se = scores_after[name] - baseline[name], scores_after[f"{name}_se"]
        rows.append(row(f"eval_{name}_over_baseline_in_se", margin / se if se else math.nan, "se"))
        passed = passed and margin > 2 * se
    rows.append(row("learning_signal", float(passed), "bool",
                    note="1: loss drop and metric margin over the baseline both above 2 standard errors"))
    return rows


def row(metric, value, unit, step=None, scope="", note="") -> dict:
    """A Measurement as the dict a trial returns."""
    return Measurement(metric, float(value), unit, step, scope, note).as_dict()


def fine_tune(config: TrialConfig) -> tuple[list[dict], dict]:
    device = torch.device(config.device)
    task = load_task(config.task)
    started = time.perf_counter()
    model, tokenizer, info = prepare_model(config, config.adapter, task)  # new heads train via modules_to_save
    scoring = (DecoderScoring(task, tokenizer, config.seq_len, device, config.prompt_style) if info.head == "causal_lm"
               else EncoderScoring(task, tokenizer, config.seq_len, device, info.pooling))
    rows = [m.as_dict() for m in parameter_rows(model, config.adapter is not None)]
    baseline_rss = memory.current_rss()
    load_seconds = time.perf_counter() - started

    steps, batch_size = config.steps, config.batch
    train_examples = task.train(seed=config.seed, limit=config.train_examples)
    eval_examples = task.eval(limit=config.eval_examples)
    baseline = task.baseline()
    for name, value in baseline.items():
        rows.append(row(f"baseline_{name}", value, "ratio", note="majority class" if task.kind != "multiple_choice" else "chance"))

    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError(f"Nothing to train: {config.model} with head {info.head!r} and no adapter has no new "
                         "parameters. Give an adapter, or a task with a classification or multiple-choice head.")
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    warmup = max(1, int(config.warmup_ratio * steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, steps, warmup))
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.dtype)

    untrained, losses_before, _ = evaluate(task, scoring, model, eval_examples, batch_size, step=0)
    rows += untrained
    model.train()
    memory.reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    tokens, train_seconds, every = 0, 0.0, config.eval_every
    for step in range(1, steps + 1):
        start = (step - 1) * batch_size % len(train_examples)
        examples = (train_examples + train_examples)[start:start + batch_size]
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None and device.type == "cuda"):
            loss, n_tokens = scoring.train_loss(model, examples)
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
        if every and step % every == 0 and step != steps:
            rows += evaluate(task, scoring, model, eval_examples, batch_size, step=step)[0]
    if "memory" in config.measure:
        rows += training_memory_rows(device, baseline_rss)
    if "time" in config.measure:
        rows.append(row("train_time_s", train_seconds, "s"))
        rows.append(row("time_step_s", train_seconds / steps, "s", note="mean over the training run"))
        rows.append(row("tokens_per_s", tokens / train_seconds, "tokens/s"))
    if "flops" in config.measure:
        rows.append(not_measured("flops_forward", "flops", "a training trial counts no FLOPs; a measure trial "
                                                           "(a study without tasks) does").as_dict())
    final, losses_after, scores_after = evaluate(task, scoring, model, eval_examples, batch_size, step=steps)
    rows += final
    rows += [dict(r, step=None) for r in final]  # the final values again, with no step
    rows += learning_signal_rows(task, losses_before, losses_after, scores_after, baseline)
    info = {"model_info": asdict(info), "load_seconds": load_seconds, "eval_examples": len(eval_examples),
            "device": str(device), "adapter": config.adapter.label if config.adapter else None}
    return rows, info


def training_memory_rows(device: torch.device, baseline_rss: int) -> list[dict]:
    """The peak memory of the training loop: the CUDA allocator's on a GPU, the process's RSS on a CPU."""
    if device.type == "cuda":
        return [row("peak_memory_allocated_bytes", torch.cuda.max_memory_allocated(device), "bytes"),
                row("peak_memory_reserved_bytes", torch.cuda.max_memory_reserved(device), "bytes")]
    peak = memory.peak_rss()
    return [row("peak_rss_bytes", peak, "bytes"),
            row("train_rss_bytes", peak - baseline_rss, "bytes", note="peak during training minus after load")]
