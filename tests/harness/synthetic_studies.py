"""Small synthetic studies written through the harness's own store, so that `harness.store.load` gives the
frame a real study gives: rank_ablation, block_ablation, efficiency and a commonsense study."""
from __future__ import annotations

import hashlib
import json
import math

import numpy as np

from harness.measure.records import Measurement
from harness.store import Store, load

MORE_RANKS = [{"nblocks": 4, "blk_r": r} for r in (1, 2, 4)]
SQUARE = {"blk_sz": 4, "blk_r": 4}
LORA_RANKS = [{"r": r, "lora_alpha": 2 * r} for r in (2, 4)]
STEPS = 20


def row(metric, value, unit, step=None, scope="", note="") -> dict:
    return Measurement(metric, float(value), unit, step=step, scope=scope, note=note).as_dict()


def finished_trial(study, config, rows, device="cpu", jobs=1) -> dict:
    """What the runner hands `Store.write` for a trial that finished (its id: any one unique to the config);
    `jobs`: how many trials ran at a time."""
    trial_id = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    params = ",".join(f"{k}={v}" for k, v in sorted(config["adapter_params"].items()))
    arm = ("calibrated" if config.get("calibrate") else "head only") if config["adapter"] == "none" else \
        f"{config['adapter']}({params})"
    return {"trial_id": trial_id, "study": study, "arm": arm, "status": "ok", "config": config, "rows": rows,
            "device": device, "env": {"git_commit": "test"}, "duration_s": 1.0, "jobs": jobs}


def adapter_count(params, hidden=384, matrices=18):
    rank = params.get("blk_r", params.get("r"))
    return rank * 2 * hidden * matrices


def training_rows(count, seed, skill):
    """A plausible training trial: quality improves with log parameters, plus seed noise."""
    noise = np.random.default_rng(seed * 1000 + count % 997).normal(0, 0.01)
    mcc = 0.15 + skill * math.log10(count / 1e4) + noise
    loss = 0.62 - 0.5 * skill * math.log10(count / 1e4) - noise
    rows = [row("trainable_params", count + 770, "params"), row("adapter_params", count, "params"),
            row("trainable_params", count / 18, "params", scope="encoder.layer.0.attention.self.query"),
            row("chance_matthews", 0.0, "ratio", note="majority class of train"),
            row("val_loss", 0.69, "nats", step=0), row("val_loss_se", 0.01, "nats", step=0),
            row("val_matthews", 0.0, "ratio", step=0), row("val_matthews_se", 0.05, "ratio", step=0),
            row("peak_rss_bytes", 8e8 + 40 * count, "bytes"), row("time_step_s", 0.4 + count * 1e-6, "s",
                                                                    note="mean over the training run")]
    rows += [row("train_loss", 0.69 - 0.002 * s, "nats", step=s) for s in range(1, 4)]
    final = [row("test_loss", loss, "nats"), row("test_loss_se", 0.012, "nats"),
             row("test_matthews", mcc, "ratio"), row("test_matthews_se", 0.04, "ratio"),
             row("val_loss", loss + 0.01, "nats"), row("val_matthews", mcc - 0.01, "ratio")]
    return rows + [dict(r, step=STEPS) for r in final] + final


def training_config(method, params, seed, lr=1e-3, label=None, task="cola"):
    config = {"kind": "train", "model": "minilm", "task": task, "adapter": method, "adapter_params": params,
              "target_modules": None,
              "lr": lr, "seed": seed, "profile": "cpu", "steps": STEPS, "batch": 8, "seq_len": 64}
    if label:
        config["label"] = label
    return config


def rank_records(study="rank_ablation", seeds=(0, 1, 2), lrs=(1e-3,)):
    records = []
    for seed in seeds:
        for lr in lrs:
            for method, params, label, skill in ([("more", p, None, 0.06) for p in MORE_RANKS]
                                                 + [("more", SQUARE, "square blocks", 0.04)]
                                                 + [("lora", p, None, 0.03) for p in LORA_RANKS]):
                records.append(finished_trial(study, training_config(method, params, seed, lr, label),
                                              training_rows(adapter_count(params), seed,
                                                            skill * (1 if lr == 1e-3 else 0.5))))
        records += [control_trial(study, seed), calibrated_trial(study, seed)]
    return records


def control_trial(study, seed):
    """The control that trains only the task head: no adapter, no adapter parameters."""
    rows = [row("trainable_params", 770, "params"), row("test_loss", 0.66, "nats"), row("test_loss_se", 0.012, "nats"),
            row("test_matthews", 0.05, "ratio"), row("test_matthews_se", 0.04, "ratio")]
    return finished_trial(study, training_config("none", {}, seed, label="head only"), rows)


def calibrated_trial(study, seed):
    """The untouched model with its head fitted on the train split: the other reference."""
    rows = [row("trainable_params", 770, "params"), row("test_loss", 0.64, "nats"), row("test_loss_se", 0.012, "nats"),
            row("test_matthews", 0.08, "ratio"), row("test_matthews_se", 0.04, "ratio")]
    return finished_trial(study, {**training_config("none", {}, seed), "calibrate": True}, rows)


def counting_records(study="rank_ablation"):
    """The measure trials a training study that asks for FLOPs adds: one per adapter configuration, at the step's
    shape (here 8 examples of 2 sequences each)."""
    return [finished_trial(study, {"kind": "measure", "model": "minilm", "task": None, "adapter": method,
                                   "adapter_params": params, "lr": 1e-3, "seed": 0, "profile": "cpu", "batch": 16,
                                   "seq_len": 64}, [row("flops_train_step", 2e11 + 1e6 * adapter_count(params), "flops")])
            for method, params in [("more", p) for p in MORE_RANKS] + [("lora", p) for p in LORA_RANKS]]


def in_turn_record(study="rank_ablation"):
    """The interleaved trial a training study that asks for time adds: every configuration's training step timed in
    turn in one process, its rows scoped by each configuration's arm; configuration i takes 0.5 + 0.1 i seconds."""
    arms = [f"{method}(" + ",".join(f"{k}={v}" for k, v in sorted(params.items())) + ")"
            for method, params in [("more", p) for p in MORE_RANKS] + [("lora", p) for p in LORA_RANKS]]
    rows = [r for i, arm in enumerate(arms) for r in (row("time_step_s", 0.5 + 0.1 * i, "s", scope=arm, note="median of 10"),
                                                      row("time_step_s_iqr", 0.01, "s", scope=arm))]
    return finished_trial(study, {"kind": "interleaved", "model": "minilm", "task": None, "adapter": "none",
                                  "adapter_params": {}, "seed": 0, "profile": "cpu", "batch": 16, "seq_len": 64}, rows)


def block_records(study="block_ablation"):
    return [finished_trial(study, training_config("more", {"nblocks": k, "blk_r": 4}, seed),
                           training_rows(adapter_count({"blk_r": 4}) + k, seed, 0.05 - 0.005 * k))
            for k in (1, 2, 4, 8) for seed in (0, 1)] + [
        reference(study, seed) for seed in (0, 1) for reference in (control_trial, calibrated_trial)]


def efficiency_records(study="efficiency"):
    """Two models, two sequence lengths; the paper-scale model is on the meta device: counts only."""
    records = []
    for model in ("minilm", "roberta-large@paper"):
        meta = model.endswith("@paper")
        for seq_len in (64, 256):
            for method, params in [("more", {"nblocks": 4, "blk_r": 4}), ("lora", {"r": 8, "lora_alpha": 16})]:
                count = adapter_count(params) * (4 if meta else 1)
                rows = [row("trainable_params", count + 1000, "params"), row("adapter_params", count, "params"),
                        row("flops_forward", 1e9 * seq_len / 64 * (30 if meta else 1), "flops"),
                        row("flops_train_step", 3e9 * seq_len / 64 * (30 if meta else 1) + count, "flops")]
                if meta:
                    rows += [row("peak_rss_bytes", math.nan, "bytes", note="not measured: meta device: no memory"),
                             row("time_step_s", math.nan, "s", note="not measured: meta device: nothing runs")]
                else:
                    rows += [row("peak_rss_bytes", 7e8 + seq_len * 1e5 + count * 8, "bytes"),
                             row("time_step_s", 0.1 * seq_len / 64 + count * 1e-7, "s", note="median of 5"),
                             row("time_step_s_iqr", 0.004, "s")]
                rows.append(row("peak_memory_allocated_bytes", math.nan, "bytes", note="not measured: no CUDA device"))
                config = {"model": model, "task": None, "adapter": method, "adapter_params": params, "lr": None,
                          "seed": 0, "profile": "cpu", "batch": 4, "seq_len": seq_len, "repeats": 5}
                records.append(finished_trial(study, config, rows, device="meta" if meta else "cpu"))
    return records


def commonsense_records(study="commonsense_tasks"):
    records = []
    for task in ("boolq", "piqa", "siqa"):
        for method, params in [("more", {"nblocks": 4, "blk_r": 4}), ("lora", {"r": 4, "lora_alpha": 8})]:
            accuracy = {"boolq": 0.62, "piqa": 0.55, "siqa": 0.4}[task] + (0.03 if method == "more" else 0.0)
            rows = [row("adapter_params", adapter_count(params), "params"),
                    row("test_accuracy", accuracy, "ratio"), row("test_accuracy_se", 0.03, "ratio"),
                    row("test_loss", 0.6, "nats"), row("test_loss_se", 0.01, "nats")]
            records.append(finished_trial(study, training_config(method, params, 0, task=task), rows))
    return records


def write_study(results_dir, records):
    """Writes the records through the store and reads the study back as `harness.store.load` gives it."""
    store = Store(records[0]["study"], results_dir)
    for record in records:
        store.write(record)
    return load(records[0]["study"], results_dir)


def write_all_studies(results_dir):
    """Every synthetic study under results_dir; returns their frames by study name."""
    frames = [write_study(results_dir, make()) for make in
              (rank_records, block_records, efficiency_records, commonsense_records)]
    return {frame["study"].iloc[0]: frame for frame in frames}
