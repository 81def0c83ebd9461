"""Short fine-tunes on real models and real data: the loss goes down for LoRA and MoRe alike, data
order is paired across adapters, and every trainable module is counted."""
import pytest

from harness.adapters import AdapterSpec
from harness.run_trial import run_trial
from harness.trial import TrialConfig


def trial(model, task, adapter, params, **budget):
    settings = {"lr": 3e-3, "seed": 0, "steps": 8, "batch": 8, "seq_len": 64, "eval_examples": 16,
                "train_examples": 8, "threads": 2, **budget}
    config = TrialConfig(kind="train", model=model, task=task, adapter=AdapterSpec.make(adapter, params), **settings)
    return run_trial(config).rows


def series(rows, metric):
    return [r["value"] for r in sorted((r for r in rows if r["metric"] == metric and r["step"] is not None),
                                       key=lambda r: r["step"])]


def final(rows, metric):
    return next(r["value"] for r in rows if r["metric"] == metric and r["step"] is None and not r["scope"])


@pytest.mark.parametrize("adapter,params", [("more", {"nblocks": 4, "blk_r": 4}), ("lora", {"r": 4, "lora_alpha": 8})])
def test_a_short_fine_tune_lowers_the_training_loss(adapter, params):
    """Eight steps on the same eight BoolQ examples: the encoder must fit them better."""
    rows = trial("minilm", "boolq", adapter, params)
    losses = series(rows, "train_loss")
    assert len(losses) == 8 and losses[-1] < losses[0]
    # the new classification head is trained and counted with the adapter
    assert final(rows, "trainable_params") == final(rows, "adapter_params") + 384 * 2 + 2
    assert final(rows, "baseline_accuracy") > 0.6  # BoolQ's majority class
    assert {"eval_loss", "eval_loss_se", "eval_accuracy", "eval_accuracy_se", "tokens_per_s", "peak_rss_bytes",
            "eval_loss_drop_in_se", "eval_accuracy_over_baseline_in_se", "learning_signal"} <= {r["metric"] for r in rows}


@pytest.mark.parametrize("adapter,params", [("more", {"nblocks": 4, "blk_r": 2}), ("lora", {"r": 2, "lora_alpha": 4})])
def test_decoder_fine_tune_lowers_the_answer_loss(adapter, params):
    rows = trial("smollm2", "piqa", adapter, params, steps=4, batch=4, train_examples=4, eval_examples=8, lr=1e-3)
    losses = series(rows, "train_loss")
    assert losses[-1] < losses[0]
    assert series(rows, "eval_loss")[0] > 0 and "eval_accuracy_length_normalised" in {r["metric"] for r in rows}
    assert final(rows, "trainable_params") == final(rows, "adapter_params")  # a causal LM adds no head


def test_runs_are_deterministic_and_evaluated_on_schedule():
    first = trial("minilm", "piqa", "more", {"nblocks": 2, "blk_r": 2}, steps=4, eval_every=2, batch=4)
    again = trial("minilm", "piqa", "more", {"nblocks": 2, "blk_r": 2}, steps=4, eval_every=2, batch=4)
    assert series(first, "train_loss") == series(again, "train_loss")
    assert [r["step"] for r in first if r["metric"] == "eval_loss" and r["step"] is not None] == [0, 2, 4]


def test_a_training_trial_reports_only_the_costs_it_is_asked_for():
    rows = trial("minilm", "boolq", "lora", {"r": 2}, steps=2, eval_examples=8, train_examples=4, batch=4,
                 measure=["params"])
    metrics = {r["metric"] for r in rows}
    assert "trainable_params" in metrics and "eval_loss" in metrics
    assert not metrics & {"peak_rss_bytes", "train_rss_bytes", "time_step_s", "tokens_per_s", "train_time_s"}
    flops = trial("minilm", "boolq", "lora", {"r": 2}, steps=2, eval_examples=8, train_examples=4, batch=4,
                  measure=["params", "flops"])
    (row,) = [r for r in flops if r["metric"] == "flops_forward"]
    assert row["value"] != row["value"] and "a measure trial" in row["note"]  # NaN with the reason, never 0
