"""The results that ship in results/ hold what the README says of them."""
import pandas as pd
import pytest

from harness.layers import layer_sizes
from harness.spec import load_study
from harness.store import RESULTS_DIR, Store, final_values, load


def final(frame: pd.DataFrame, metric: str) -> pd.Series:
    rows = final_values(frame)
    return rows[rows.metric == metric].set_index("trial_id")["value"]


@pytest.mark.parametrize("study", ["rank_ablation", "block_ablation", "efficiency"])
def test_shipped_results_are_keyed_by_the_trials_the_study_plans_now(study):
    """A rerun on the CPU profile finds every trial done: no record is orphaned by a change of trial id."""
    if not (RESULTS_DIR / study / "trials.csv").exists():
        pytest.skip(f"no shipped results for {study}")
    planned = {t.id for t in load_study(study, "cpu", layer_sizes=layer_sizes).trials}
    assert Store(study).status() == dict.fromkeys(planned, "ok")


@pytest.mark.parametrize("study", ["rank_ablation", "block_ablation"])
def test_every_shipped_training_trial_shows_a_learning_signal(study):
    """Held-out loss and task metric each moved by more than two standard errors of the evaluation set:
    the loss against the untrained model (paired per-example differences), the metric against the
    majority class or chance (bootstrap)."""
    if not (RESULTS_DIR / study / "trials.csv").exists():
        pytest.skip(f"no shipped results for {study}")
    frame = load(study)
    trials = frame.drop_duplicates("trial_id")
    assert (trials.status == "ok").all()
    assert (final(frame, "eval_loss_drop_in_se") > 2).all()
    assert (final(frame, "eval_accuracy_over_baseline_in_se") > 2).all()
    assert (final(frame, "learning_signal") == 1).all()
    # the recorded margins are what the rows they summarise say
    drop = final(frame, "eval_loss_drop") / final(frame, "eval_loss_drop_se")
    pd.testing.assert_series_equal(drop, final(frame, "eval_loss_drop_in_se"), check_names=False)
    margin = (final(frame, "eval_accuracy") - final(frame, "baseline_accuracy")) / final(frame, "eval_accuracy_se")
    pd.testing.assert_series_equal(margin, final(frame, "eval_accuracy_over_baseline_in_se"), check_names=False)


def test_rank_ablation_pairs_each_more_rank_with_lora_of_equal_parameters():
    if not (RESULTS_DIR / "rank_ablation" / "trials.csv").exists():
        pytest.skip("no shipped rank_ablation results")
    frame = load("rank_ablation")
    params = final(frame, "adapter_params")
    trials = frame.drop_duplicates("trial_id").set_index("trial_id")
    more = sorted(params[trials.adapter[params.index] == "more"])
    lora = sorted(params[trials.adapter[params.index] == "lora"])
    assert more == lora and len(more) >= 4
