"""A study's answers from its stored results: learning rates chosen on validation, intervals paired over examples and
seeds, the `learns` criterion against the stronger reference, and the compare-arms and analyse commands.

The study is written through the real store: per-example outputs built so that each arm's right and wrong answers
differ from the calibrated reference's on a known number of examples per seed."""
import math

import numpy as np
import pandas as pd
import pytest

from harness import analysis, stats
from harness.adapters import AdapterSpec
from harness.cli import main
from harness.measure.records import Measurement
from harness.store import Store, load, record_of
from harness.trial import TrialConfig, TrialResult

STUDY, N, SEEDS, RESAMPLES = "answers", 200, (0, 1, 2), 200
LABELS = np.random.default_rng(0).integers(0, 2, N)
RIGHT = np.arange(N) < 120  # the calibrated reference is right on these, at every seed
MORE = AdapterSpec.make("more", {"nblocks": 4, "blk_r": 4})
LORA = AdapterSpec.make("lora", {"r": 4})
VERA = AdapterSpec.make("vera", {"r": 256})
ADAPTERS = {"more": MORE, "lora": LORA, "head only": None, "calibrated": None}

# arm -> lr -> split -> (gained, lost): examples the arm gets right where the reference is wrong, and the reverse;
# each arm also carries a loss offset per rate (to break accuracy ties)
PLAN = {
    # validation prefers 1e-3, test would prefer 4e-3
    "more": {1e-3: {"validation": (30, 5), "test": (30, 5)}, 4e-3: {"validation": (10, 5), "test": (45, 0)}},
    # validation accuracy ties: the lower validation loss (4e-3) wins; test would prefer 1e-3
    "lora": {1e-3: {"validation": (10, 5), "test": (40, 0)}, 4e-3: {"validation": (10, 5), "test": (12, 8)}},
    "head only": {1e-3: {"validation": (0, 20), "test": (0, 20)}, 4e-3: {"validation": (0, 25), "test": (0, 20)}},
    "calibrated": {1e-3: {"validation": (0, 0), "test": (0, 0)}},
}
LOSS_OFFSET = {("lora", 4e-3): -0.05}
SKIPPED = {("head only", 4e-3, 0)}  # the head-only control never ran 4e-3 with seed 0: seed 1 is its tuning seed


def split_outputs(split: str, gained: int, lost: int, seed: int, offset: float) -> pd.DataFrame:
    rng = np.random.default_rng([seed, gained, lost, len(split)])
    correct = RIGHT.copy()
    correct[rng.choice(np.flatnonzero(RIGHT), lost, replace=False)] = False
    correct[rng.choice(np.flatnonzero(~RIGHT), gained, replace=False)] = True
    return pd.DataFrame({"split": split, "example_id": [f"{split[0]}{i}" for i in range(N)], "label": LABELS,
                         "prediction": np.where(correct, LABELS, 1 - LABELS), "correct": correct.astype(int),
                         "loss": np.where(correct, 0.3, 1.2) + offset})


def trial(arm: str, lr: float, seed: int) -> tuple[TrialConfig, TrialResult]:
    config = TrialConfig(kind="train", model="minilm", task="boolq", adapter=ADAPTERS[arm], lr=lr, seed=seed,
                         calibrate=arm == "calibrated", steps=10)
    params = {"more": 4608, "lora": 18432}.get(arm, 0)
    rows = [Measurement("trainable_params", params + 770, "params"), Measurement("adapter_params", params, "params"),
            Measurement("chance_accuracy", 0.5, "ratio")]
    examples = []
    for split, prefix in (("validation", "val"), ("test", "test")):
        frame = split_outputs(split, *PLAN[arm][lr][split], seed, LOSS_OFFSET.get((arm, lr), 0.0))
        rows += [Measurement(f"{prefix}_accuracy", frame["correct"].mean(), "ratio"),
                 Measurement(f"{prefix}_loss", frame["loss"].mean(), "nats"),
                 Measurement(f"{prefix}_loss", 9.0, "nats", step=0)]  # a step-0 row the choice must ignore
        examples += frame.to_dict("records")
    return config, TrialResult("ok", [r.as_dict() for r in rows], examples=examples)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    store = Store(STUDY, root)
    for arm, rates in PLAN.items():
        for lr in rates:
            for seed in SEEDS:
                if (arm, lr, seed) not in SKIPPED:
                    store.write(record_of(STUDY, *trial(arm, lr, seed)))
    failed = TrialConfig(kind="train", model="minilm", task="boolq", adapter=MORE, lr=1e-2, seed=0, steps=10)
    store.write(record_of(STUDY, failed, TrialResult.failure("Timeout", "ran past its limit")))
    for lr in (1e-3, 4e-3):  # a method that cannot be built on the model fails at every rate
        unbuilt = TrialConfig(kind="train", model="minilm", task="boolq", adapter=VERA, lr=lr, seed=0, steps=10)
        store.write(record_of(STUDY, unbuilt, TrialResult.failure("AdapterBuildError", "no layer it supports")))
    return root


@pytest.fixture(scope="module")
def summary(results):
    table, path = analysis.write_summary(STUDY, results, n_resamples=RESAMPLES)
    assert path == results / STUDY / "analysis.csv"
    return table.set_index("arm")


def test_learning_rates_are_chosen_on_validation_never_on_test(results):
    frame = load(STUDY, results)
    chosen = analysis.choose_learning_rates(frame).set_index("arm")
    assert chosen.at[MORE.label, "lr"] == 1e-3  # test would prefer 4e-3
    assert chosen.at[LORA.label, "lr"] == 4e-3  # a validation tie, broken by the lower validation loss
    assert chosen.at["head only", "lr"] == 1e-3 and chosen.at["head only", "tuning_seed"] == 1
    assert chosen.at["calibrated", "rates"] == 1 and chosen.at[MORE.label, "rates"] == 2  # the failed 1e-2 is no rate
    assert chosen.at[MORE.label, "val_metric"] == pytest.approx((120 + 30 - 5) / N)
    assert chosen.at[MORE.label, "val_by_lr"] == "0.001: 0.7250; 0.004: 0.6250"
    without_test = frame[~frame["metric"].str.startswith("test_")]
    pd.testing.assert_frame_equal(analysis.choose_learning_rates(without_test), analysis.choose_learning_rates(frame))


def test_arm_outputs_are_every_seed_at_the_rate(results):
    frame = load(STUDY, results)
    outputs = analysis.arm_outputs(Store(STUDY, results), frame, "minilm", "boolq", "head only", 4e-3, "test")
    assert sorted(outputs) == [1, 2]
    assert set(outputs[1]["split"]) == {"test"} and len(outputs[1]) == N
    with pytest.raises(ValueError, match="No finished trial"):
        analysis.arm_outputs(Store(STUDY, results), frame, "minilm", "boolq", MORE.label, 1e-2, "test")


def test_summary_intervals_are_paired_and_at_the_chosen_rate(summary, results):
    more = summary.loc[MORE.label]
    assert more["lr"] == 1e-3 and more["seeds"] == 3 and more["examples"] == N and more["metric"] == "accuracy"
    assert more["test_metric"] == pytest.approx((120 + 30 - 5) / N)
    assert more["test_metric_low"] < more["test_metric"] < more["test_metric_high"]
    assert more["vs_calibrated_metric"] == pytest.approx(25 / N)
    assert more["vs_calibrated_loss"] == pytest.approx(-25 / N * 0.9)
    unpaired = math.hypot(more["test_metric_se"], summary.at["calibrated", "test_metric_se"])
    assert 0 < more["vs_calibrated_metric_se"] < 0.75 * unpaired  # the pairing removes the shared examples
    assert more["trainable_params"] == 4608 + 770 and more["adapter_params"] == 4608
    assert more["chance_metric"] == 0.5
    written = pd.read_csv(results / STUDY / "analysis.csv")
    assert sorted(written.columns) == sorted(summary.reset_index().columns) and len(written) == 5  # vera failed


def test_an_arm_learns_only_beyond_two_paired_errors_over_the_stronger_reference(summary):
    assert set(summary["stronger_reference"].dropna()) == {"calibrated"}  # it scores above the head-only control
    more, lora = summary.loc[MORE.label], summary.loc[LORA.label]
    assert more["learns"] == 1 and more["vs_calibrated_metric"] > 2 * more["vs_calibrated_metric_se"]
    # lora is ahead of the calibrated model by less than 2 SE: it does not learn, although it clearly beats the
    # weaker reference
    assert 0 < lora["vs_calibrated_metric"] < 2 * lora["vs_calibrated_metric_se"]
    assert lora["vs_head_only_metric"] > 2 * lora["vs_head_only_metric_se"]
    assert lora["learns"] == 0
    assert summary[["learns"]].loc[["head only", "calibrated"]].isna().all().all()  # references get no verdict
    assert math.isnan(summary.at["calibrated", "vs_calibrated_metric"])


def test_compare_arms_pairs_the_arms_on_their_seeds(results):
    comparison = analysis.compare_arms(STUDY, "blk_r=4", "calibrated", results_dir=results, n_resamples=RESAMPLES)
    assert comparison.arms == (MORE.label, "calibrated") and comparison.lrs == (1e-3, 1e-3)
    difference = comparison.difference["accuracy"]
    assert difference.value == pytest.approx(25 / N) and difference.resolved and difference.seeds == 3
    on_validation = analysis.compare_arms(STUDY, "r=4", "head only", split="validation", results_dir=results,
                                          n_resamples=RESAMPLES)
    assert on_validation.arms == (LORA.label, "head only")  # r=4 is lora's whole piece, not more's blk_r=4
    assert on_validation.difference["accuracy"].value == pytest.approx(25 / N)


def test_compare_arms_takes_an_arm_from_another_study_at_that_study_s_rate(results):
    """`OTHER:arm` pairs an arm of a second study of the same model and task (a sensitivity run, say) on the same
    questions and seeds, at the rate that study chose."""
    other = Store("rerun", results)
    for seed in SEEDS:
        other.write(record_of("rerun", *trial("lora", 1e-3, seed)))
        other.write(record_of("rerun", *trial("calibrated", 1e-3, seed)))
    comparison = analysis.compare_arms(STUDY, "more", f"rerun:{LORA.label}", results_dir=results,
                                       n_resamples=RESAMPLES)  # the prefix ends before the arm's parenthesis
    assert comparison.arms == (MORE.label, f"rerun:{LORA.label}") and comparison.lrs == (1e-3, 1e-3)
    # more at 1e-3 gains 30 and loses 5 of the reference's answers on test; lora at 1e-3 gains 40
    assert comparison.difference["accuracy"].value == pytest.approx((25 - 40) / N)
    here = analysis.compare_arms(STUDY, "more", "lora", results_dir=results, n_resamples=RESAMPLES)
    assert here.lrs == (1e-3, 4e-3)  # in its own study lora's validation chose 4e-3
    with pytest.raises(ValueError, match="same arm"):
        analysis.compare_arms(STUDY, "lora", f"{STUDY}:lora", results_dir=results)
    with pytest.raises(ValueError, match="same arm .* the same trials"):  # one reference shipped in two studies
        analysis.compare_arms(STUDY, "calibrated", "rerun:calibrated", results_dir=results)
    with pytest.raises(ValueError, match="In study 'rerun': No arm 'more'"):
        analysis.compare_arms(STUDY, "lora", "rerun:more", results_dir=results)
    with pytest.raises(ValueError, match="name an arm as ARM or STUDY:ARM"):
        analysis.compare_arms(STUDY, "lora", "rerun:", results_dir=results)
    with pytest.raises(FileNotFoundError, match="No results for study 'elsewhere'"):
        analysis.compare_arms(STUDY, "lora", "elsewhere:lora", results_dir=results)


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_compare_arms_command(capsys, results):
    code, out, _ = run(capsys, "compare-arms", STUDY, "more", "calibrated", "--results-dir", str(results))
    assert code == 0
    assert f"{MORE.label} (lr 0.001): accuracy 0.7250 [95% " in out
    assert "accuracy difference (" in out and "z " in out and ", resolved" in out
    code, out, _ = run(capsys, "compare-arms", STUDY, "lora", "calibrated", "--results-dir", str(results))
    assert code == 0 and "not resolved (within 2 paired SE)" in out


@pytest.fixture(scope="module")
def measured_only(tmp_path_factory):
    root = tmp_path_factory.mktemp("measured")
    config = TrialConfig(kind="measure", model="minilm", adapter=MORE)
    Store("costs", root).write(record_of("costs", config, TrialResult("ok", [])))
    return root


def test_results_without_training_or_from_before_arms_are_refused(results, measured_only, capsys):
    code, _, err = run(capsys, "analyse", "costs", "--results-dir", str(measured_only))
    assert code == 2 and "no finished training trial" in err
    with pytest.raises(ValueError, match="predate arms"):
        analysis.choose_learning_rates(load(STUDY, results).drop(columns="arm"))


@pytest.mark.parametrize("argv, message", [
    (("compare-arms", STUDY, "o", "calibrated"), "names several arms"),
    (("compare-arms", STUDY, "dora", "calibrated"), "No arm 'dora'; the arms are: "),
    (("compare-arms", STUDY, "more", "more"), "the same arm"),
    (("compare-arms", STUDY, "more", "lora", "--model", "smollm2"), "No model 'smollm2'"),
    (("compare-arms", "no_such_study", "more", "lora"), "No results for study 'no_such_study'"),
    (("analyse", "no_such_study"), "No results for study 'no_such_study'"),
])
def test_bad_input_exits_2_with_the_reason(capsys, results, argv, message):
    code, _, err = run(capsys, *argv, "--results-dir", str(results))
    assert code == 2 and message in err and "Traceback" not in err


def test_analyse_command_writes_and_prints_the_table(capsys, results, monkeypatch):
    monkeypatch.setattr(stats, "N_RESAMPLES", RESAMPLES)
    code, out, _ = run(capsys, "analyse", STUDY, "--results-dir", str(results))
    assert code == 0 and "learns" in out and MORE.label in out and "analysis.csv" in out


def test_failed_trials_are_counted_with_their_reason_and_a_method_that_never_ran_keeps_its_row(summary, capsys,
                                                                                                  results):
    assert summary.at[MORE.label, "failed"] == 1 and summary.at[MORE.label, "error"] == "Timeout: ran past its limit"
    assert summary.at[LORA.label, "failed"] == 0 and summary.at[LORA.label, "error"] == ""
    vera = summary.loc[VERA.label]
    assert vera["failed"] == 2 and vera["error"] == "AdapterBuildError: no layer it supports"
    assert math.isnan(vera["test_metric"]) and pd.isna(vera["learns"])
    text = analysis.format_summary(summary.reset_index())
    assert f"{VERA.label:<32} failed: all 2 of its trials; AdapterBuildError: no layer it supports" in text
    assert "1 trial(s) failed (Timeout: ran past its limit)" in text
    assert f"{MORE.label:<32} lr 0.001    (best of 2 on validation), 3 seeds," in text  # counts stay integers


def test_arms_are_named_by_a_unique_part():
    arms = ["more(blk_r=1,nblocks=4)", "more(blk_r=16,nblocks=4)", "lora(lora_alpha=32,r=16)", "head only"]
    assert analysis.resolve_arm("blk_r=1", arms) == analysis.resolve_arm("blk_r=1,", arms) == arms[0]
    assert analysis.resolve_arm("blk_r=16", arms) == arms[1]
    assert analysis.resolve_arm("r=16", arms) == arms[2]
    assert analysis.resolve_arm("head", arms) == arms[3]
    with pytest.raises(ValueError, match="names several arms"):
        analysis.resolve_arm("more", arms)
