"""The results that ship in results/ hold what the README says of them."""
import pandas as pd
import pytest

from harness.analysis import chosen_rates
from harness.spec import load_study
from harness.store import REFERENCE_DIR, Store, final_values, load
from harness.tasks import load_task


def final(frame: pd.DataFrame, metric: str) -> pd.Series:
    rows = final_values(frame)
    return rows[rows.metric == metric].set_index("trial_id")["value"]


# Studies whose shipped results are complete; the others ship what has finished so far (a rerun resumes them).
COMPLETE = {"rank_ablation", "block_ablation", "efficiency", "methods", "bbq"}
TRAINING = ["rank_ablation", "block_ablation", "methods", "bbq"]


@pytest.mark.parametrize("study", [*TRAINING, "efficiency"])
def test_shipped_results_are_keyed_by_the_trials_the_study_plans_now(study):
    """A rerun on the CPU profile finds every shipped trial among those it plans, done: no record is orphaned by
    a change of trial id. A complete study has them all."""
    if not (REFERENCE_DIR / study / "trials.csv").exists():
        pytest.skip(f"no shipped results for {study}")
    plan = load_study(study, "cpu")
    chosen = chosen_rates(study, REFERENCE_DIR)  # the search's choice on validation, then the seeds at it
    planned = {t.id for t in plan.search() + plan.at_rates(chosen)}
    status = Store(study, REFERENCE_DIR).status()
    assert set(status) <= planned and set(status.values()) == {"ok"}
    if study in COMPLETE:
        assert set(status) == planned


@pytest.mark.parametrize("study", TRAINING)
def test_shipped_training_results_hold_their_per_example_outputs_and_references(study):
    """Every training trial finished, kept its output on every validation and test example, and those outputs
    give back the accuracy and loss it reports; both references ran beside the adapters."""
    if not (REFERENCE_DIR / study / "trials.csv").exists():
        pytest.skip(f"no shipped results for {study}")
    frame, store = load(study, REFERENCE_DIR), Store(study, REFERENCE_DIR)
    trials = frame.drop_duplicates("trial_id").set_index("trial_id")
    assert (trials.status == "ok").all()
    trials = trials[trials.kind == "train"]  # a study that asks for FLOPs counts them in measure trials
    assert {"head only", "calibrated"} <= set(trials.arm)
    for trial_id in trials.index:
        outputs = store.examples(trial_id)
        test = outputs[outputs.split == "test"]
        task = load_task(trials.task[trial_id])
        for split, rows in (("test", test), ("validation", outputs[outputs.split == "validation"])):
            assert sorted(rows.example_id) == sorted(e.uid for e in task.split(split))
        assert test.correct.mean() == pytest.approx(final(frame, "test_accuracy")[trial_id])
        assert test.loss.mean() == pytest.approx(final(frame, "test_loss")[trial_id])


def test_rank_ablation_pairs_each_more_rank_with_lora_of_equal_parameters():
    if not (REFERENCE_DIR / "rank_ablation" / "trials.csv").exists():
        pytest.skip("no shipped rank_ablation results")
    frame = load("rank_ablation", REFERENCE_DIR)
    params = final(frame, "adapter_params")
    trials = frame.drop_duplicates("trial_id").set_index("trial_id")
    more = sorted(set(params[trials.adapter[params.index] == "more"]))
    lora = sorted(set(params[trials.adapter[params.index] == "lora"]))
    assert lora[:len(more)] == more and len(more) >= 2
    assert max(lora) >= 10 * min(more)  # the paper's "10x fewer parameters" is on the axis
