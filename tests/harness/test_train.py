"""Short fine-tunes on real models and real data: the loss goes down for LoRA and MoRe alike, data
order and dropout are paired across adapters, validation and test are kept apart, and every trainable
module is counted."""
import pytest
import torch

from harness.adapters import AdapterSpec
from harness.prepare import prepare_model
from harness.run_trial import run_trial
from harness.tasks import load_task
from harness.train import BestState, optimizer_groups
from harness.trial import TrialConfig


def config_of(model, task, adapter, params, **budget):
    settings = {"lr": 3e-3, "seed": 0, "steps": 8, "batch": 8, "seq_len": 64, "validation_examples": 16,
                "test_examples": 16, "train_examples": 8, "threads": 2, **budget}
    spec = None if adapter is None else AdapterSpec.make(adapter, params)
    return TrialConfig(kind="train", model=model, task=task, adapter=spec, **settings)


def trial(model, task, adapter, params, **budget):
    return run_trial(config_of(model, task, adapter, params, **budget)).rows


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
    assert final(rows, "chance_accuracy") > 0.6  # BoolQ's majority class
    assert {"val_loss", "val_accuracy", "test_loss", "test_loss_se", "test_accuracy", "test_accuracy_se", "tokens_per_s",
            "peak_rss_bytes"} <= {r["metric"] for r in rows}


def test_outputs_of_every_example_come_back_by_split():
    result = run_trial(config_of("minilm", "commonsenseqa", "more", {"nblocks": 4, "blk_r": 2}, steps=2, batch=4,
                                 pooling="biencoder"))
    task = load_task("commonsenseqa")
    by_split = {split: [o for o in result.examples if o["split"] == split] for split in ("validation", "test")}
    assert [o["example_id"] for o in by_split["test"]] == [e.uid for e in task.split("test", 16)]
    assert [o["example_id"] for o in by_split["validation"]] == [e.uid for e in task.split("validation", 16)]
    accuracy = sum(o["correct"] for o in by_split["test"]) / 16
    assert accuracy == final(result.rows, "test_accuracy")
    loss = sum(o["loss"] for o in by_split["test"]) / 16
    assert loss == pytest.approx(final(result.rows, "test_loss"))


def test_the_head_has_its_own_rate_and_the_calibrated_reference_fits_it():
    config = config_of("minilm", "commonsenseqa", "lora", {"r": 2}, pooling="biencoder", lr=1e-3, head_lr=5e-2)
    model, _, _ = prepare_model(config, config.adapter, load_task("commonsenseqa"))
    groups = {g["lr"]: sum(p.numel() for p in g["params"]) for g in optimizer_groups(model, config)}
    assert groups == {1e-3: 2 * 2 * (384 + 384) * 6 * 3 // 2, 5e-2: 1}  # LoRA r2 on q, k, v of 6 layers; the scale
    calibrated = run_trial(config_of("minilm", "commonsenseqa", None, {}, pooling="biencoder", calibrate=True,
                                     train_examples=64))
    untouched = next(r["value"] for r in calibrated.rows if r["metric"] == "val_loss" and r["step"] == 0)
    assert final(calibrated.rows, "val_loss") < untouched  # the fitted scale beats the pretrained 20
    assert final(calibrated.rows, "calibrated_train_loss") < 1.6
    assert not [r for r in calibrated.rows if r["metric"] == "train_loss"]  # no gradient steps


@pytest.mark.parametrize("adapter,params", [("more", {"nblocks": 4, "blk_r": 2}), ("lora", {"r": 2, "lora_alpha": 4})])
def test_decoder_fine_tune_lowers_the_answer_loss(adapter, params):
    rows = trial("smollm2", "piqa", adapter, params, steps=4, batch=4, train_examples=4, validation_examples=8,
                 test_examples=8, lr=1e-3)
    losses = series(rows, "train_loss")
    assert losses[-1] < losses[0]
    assert series(rows, "val_loss")[0] > 0 and "test_accuracy_length_normalised" in {r["metric"] for r in rows}
    assert final(rows, "trainable_params") == final(rows, "adapter_params")  # a causal LM adds no head


def test_runs_are_deterministic_and_evaluated_on_schedule():
    first = trial("minilm", "piqa", "more", {"nblocks": 2, "blk_r": 2}, steps=4, eval_every=2, batch=4)
    again = trial("minilm", "piqa", "more", {"nblocks": 2, "blk_r": 2}, steps=4, eval_every=2, batch=4)
    assert series(first, "train_loss") == series(again, "train_loss")
    assert [r["step"] for r in first if r["metric"] == "val_loss" and r["step"] is not None] == [0, 2, 4]
    chosen = final(first, "chosen_step")
    assert [r["step"] for r in first if r["metric"] == "test_loss" and r["step"] is not None] == [chosen]


def test_with_eval_every_the_step_is_chosen_on_validation_and_its_state_restored():
    """A rate far too high wrecks the encoder after step 0: validation must choose an earlier state, and the final
    evaluation must be of that state (its validation values equal the curve's at the chosen step), not the last."""
    rows = trial("minilm", "piqa", "lora", {"r": 2}, steps=4, eval_every=2, batch=4, lr=1.0, head_lr=1.0,
                 validation_examples=32, pooling="mean")
    chosen, curve = final(rows, "chosen_step"), series(rows, "val_loss")
    assert chosen < 4 and curve[-1] != curve[int(chosen) // 2]
    assert final(rows, "val_loss") == pytest.approx(curve[int(chosen) // 2], rel=1e-5)
    accuracies = series(rows, "val_accuracy")
    assert accuracies[int(chosen) // 2] == max(accuracies)
    # without eval_every the last step is kept and no step is chosen
    plain = trial("minilm", "piqa", "lora", {"r": 2}, steps=2, batch=4, validation_examples=8)
    assert "chosen_step" not in {r["metric"] for r in plain}


def test_dropout_is_reseeded_after_the_adapter_is_built():
    """Two adapters whose inits draw different amounts of randomness still see the same dropout masks: with
    their updates at zero (lr 0), the head-only control and both adapters give the same training losses."""
    budget = {"steps": 3, "batch": 4, "lr": 0.0, "head_lr": 0.0, "pooling": "mean", "validation_examples": 4,
              "test_examples": 4}
    losses = [series(trial("minilm", "piqa", a, p, **budget), "train_loss")
              for a, p in ((None, {}), ("lora", {"r": 2}), ("more", {"nblocks": 4, "blk_r": 4}))]
    assert losses[0] == pytest.approx(losses[1], abs=1e-6) and losses[0] == pytest.approx(losses[2], abs=1e-6)


def test_a_training_trial_reports_only_the_costs_it_is_asked_for():
    rows = trial("minilm", "boolq", "lora", {"r": 2}, steps=2, train_examples=4, batch=4, measure=["params"])
    metrics = {r["metric"] for r in rows}
    assert "trainable_params" in metrics and "test_loss" in metrics
    assert not metrics & {"peak_rss_bytes", "train_rss_bytes", "time_step_s", "tokens_per_s", "train_time_s"}
    flops = trial("minilm", "boolq", "lora", {"r": 2}, steps=2, train_examples=4, batch=4, measure=["params", "flops"])
    (row,) = [r for r in flops if r["metric"] == "flops_forward"]
    assert row["value"] != row["value"] and "a measure trial" in row["note"]  # NaN with the reason, never 0


def test_the_best_state_prefers_the_metric_then_the_loss_then_the_earlier_step_and_restores_every_trainable():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    model[0].weight.requires_grad_(False)  # a frozen weight is neither saved nor restored
    best = BestState([p for p in model.parameters() if p.requires_grad], "accuracy")

    def evaluated(accuracy, loss, step, fill):
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.fill_(fill)
        best.offer([{"metric": "val_accuracy", "value": accuracy}, {"metric": "val_loss", "value": loss}], step)

    evaluated(float("nan"), 1.6, 0, 0.0)  # a NaN first evaluation is still kept, until anything beats it
    assert best.step == 0
    evaluated(0.30, 1.5, 10, 1.0)
    evaluated(0.40, 1.4, 20, 2.0)
    evaluated(0.40, 1.3, 30, 3.0)  # a tie in accuracy: the lower loss wins
    evaluated(0.40, 1.3, 40, 4.0)  # a full tie: the earlier step stays
    evaluated(float("nan"), 0.1, 50, 5.0)
    assert best.step == 30
    with torch.no_grad():
        model[0].weight.fill_(-1.0)
    best.restore()
    assert all((p == 3.0).all() for p in model.parameters() if p.requires_grad)
    assert (model[0].weight == -1.0).all()
