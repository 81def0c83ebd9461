"""harness.figures.tables: what the figures plot, computed with pandas alone (no matplotlib)."""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from synthetic_studies import (STEPS, block_records, commonsense_records, efficiency_records, rank_records,
                               write_study)

from harness import paper
from harness.adapters import series_name
from harness.figures import tables
from harness.store import (REFERENCE_DIR, REFERENCE_MACHINE, THIS_MACHINE, final_values, machine_of,
                           reference_beside)


@pytest.fixture(scope="module")
def rank(tmp_path_factory):
    return write_study(tmp_path_factory.mktemp("results"), rank_records())


@pytest.fixture(scope="module")
def efficiency(tmp_path_factory):
    return write_study(tmp_path_factory.mktemp("results"), efficiency_records())


def test_the_tables_need_no_matplotlib():
    code = ("import sys, harness.figures.tables; "
            "drawn = sorted(m for m in sys.modules if m.split('.')[0] in ('matplotlib', 'seaborn')); "
            "assert not drawn, drawn")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_per_trial_takes_each_trials_final_whole_model_value(rank):
    table = tables.per_trial(rank, ["test_matthews", "trainable_params"])
    assert len(table) == rank["trial_id"].nunique() == 3 * 8
    final = final_values(rank)
    expected = final[final["metric"] == "test_matthews"].set_index("trial_id")["value"]
    assert table.set_index("trial_id")["test_matthews"].to_dict() == expected.to_dict()
    # the whole model's count, not the per-module row; config columns come along, measurement columns do not
    more = table[(table["adapter"] == "more") & (table["blk_r"] == 1) & (table["nblocks"] == 4)]
    assert set(more["trainable_params"]) == {1 * 2 * 384 * 18 + 770}
    assert "seed" in table and "metric" not in table and "value" not in table


def test_per_trial_at_a_step(rank):
    untrained = tables.per_trial(rank, ["val_matthews"], step=0)
    assert len(untrained) == 3 * 6  # the references were not evaluated before training
    assert set(untrained["val_matthews"]) == {0.0}
    at_end = tables.per_trial(rank, ["test_loss"], step=STEPS)
    assert at_end.set_index("trial_id")["test_loss"].equals(
        tables.per_trial(rank, ["test_loss"]).set_index("trial_id").loc[at_end["trial_id"], "test_loss"])


def test_per_trial_keeps_a_value_that_was_not_measured(efficiency):
    table = tables.per_trial(efficiency, ["time_step_s"])
    assert len(table) == 8 and table["time_step_s"].isna().sum() == 4  # the meta device's trials
    assert tables.notes_of(efficiency, "peak_memory_allocated_bytes") == "not measured: no CUDA device"


def test_names_of_series_and_configurations():
    assert series_name("lora") == "LoRA" and series_name("none") == "no adapter" and series_name("ia3") == "ia3"
    assert series_name("more", "square blocks") == "MoRe (square blocks)"
    square = pd.Series({"adapter": "more", "label": "square blocks", "nblocks": np.nan, "blk_sz": 4.0, "blk_r": 4.0})
    assert tables.config_label(square) == "MoRe (square blocks) b=4 r=4"
    assert tables.config_label(pd.Series({"adapter": "lora", "r": 8.0, "lora_alpha": 16.0})) == "LoRA r=8"


def test_the_quality_axis_follows_the_task(rank, efficiency):
    assert tables.task_metric(rank) == "matthews"
    q = tables.quality_axis(rank)
    assert (q.column, q.scale, q.higher_is_better, q.bounds) == ("test_matthews", 100.0, True, (-100.0, 100.0))
    with pytest.raises(tables.NothingToDraw, match="no training trials"):
        tables.quality_axis(efficiency)
    assert tables.figure_quality("f", None, paper.nblocks(), "metric", None).metric == "matthews"
    with pytest.raises(tables.NothingToDraw, match="neither"):
        tables.figure_quality("f", None, None, "metric", None)
    with pytest.raises(ValueError, match="'metric' or 'loss'"):
        tables.quality_axis(rank, "accuracy")


def test_summarise_seeds_gives_a_95_percent_interval_over_seeds_or_the_test_set():
    table = pd.DataFrame({"adapter": ["more"] * 3 + ["lora"], "r": [np.nan] * 3 + [8.0],
                          "x": [10.0, 10.0, 10.0, 20.0], "y": [1.0, 2.0, 3.0, 5.0], "y_se": [0.1, 0.1, 0.1, 0.5]})
    points = tables.summarise_seeds(table).set_index("adapter")
    half = 4.302653 * 1.0 / math.sqrt(3)  # t(2) at 97.5% x sd / sqrt(n)
    assert points.loc["more", ["y", "n"]].tolist() == [2.0, 3]
    assert points.loc["more", ["lo", "hi"]].tolist() == pytest.approx([2.0 - half, 2.0 + half])
    assert points.loc["lora", ["lo", "hi", "n"]].tolist() == pytest.approx([5 - 0.979982, 5 + 0.979982, 1])
    clipped = tables.summarise_seeds(table, bounds=(0.0, 5.2)).set_index("adapter")
    assert clipped.loc["more", "lo"] == 0.0 and clipped.loc["lora", "hi"] == 5.2
    bars = tables.error_bars(clipped.loc[["more", "lora"]].reset_index())
    assert bars.shape == (2, 2) and bars[1].tolist() == pytest.approx([half, 0.2])  # asymmetric once clipped
    assert tables.error_bars(pd.DataFrame({"y": [1.0]})) is None


def test_the_best_learning_rate_of_each_arm(tmp_path):
    results = write_study(tmp_path, rank_records("lr_sweep", seeds=(0,), lrs=(1e-3, 1e-4)))
    for quality in ("metric", "loss"):
        q = tables.quality_axis(results, quality)
        table = tables.trial_quality(results, q, x_metric="adapter_params")
        best = tables.keep_best_lr(table, results)
        assert len(best) == len(table) // 2 and set(best["rates"]) == {2}
        assert set(best["lr"]) == {1e-3}  # the synthetic trials learn more at 1e-3, on either axis


def test_the_learning_rate_is_chosen_on_validation_never_on_test(tmp_path):
    results = write_study(tmp_path, rank_records("lr_choice", seeds=(0,), lrs=(1e-3, 1e-4)))
    q = tables.quality_axis(results)

    def chosen(metric):
        """The rates kept when every `metric` row at 1e-4 reads 0.99."""
        rows = (results["lr"] == 1e-4) & (results["metric"] == metric)
        frame = results.assign(value=results["value"].mask(rows, 0.99))
        return set(tables.keep_best_lr(tables.trial_quality(frame, q, x_metric="adapter_params"), frame)["lr"])

    assert chosen("test_matthews") == {1e-3}  # test would prefer 1e-4; validation chooses 1e-3
    assert chosen("val_matthews") == {1e-4}
    blocks = write_study(tmp_path, block_records())
    single = tables.trial_quality(blocks, q, x_column="nblocks")
    assert tables.keep_best_lr(single, blocks).equals(single.assign(rates=1))


def test_trial_quality_leaves_out_the_controls(rank):
    q = tables.quality_axis(rank)
    table = tables.trial_quality(rank, q, x_metric="adapter_params")
    assert "none" not in set(table["adapter"]) and len(table) == 3 * 6
    assert table["y"].tolist() == pytest.approx((table["test_matthews"] * 100).tolist())


def test_baselines_are_chance_and_the_two_reference_arms(rank):
    lines = tables.baselines(rank, tables.quality_axis(rank)).set_index("text")["y"]
    assert lines.to_dict() == pytest.approx({"chance: majority class of train": 0.0, "control: head only": 5.0,
                                             "untouched model, head calibrated": 8.0})
    loss_lines = tables.baselines(rank, tables.quality_axis(rank, "loss")).set_index("text")["y"]
    assert loss_lines.to_dict() == pytest.approx({"control: head only": 0.66, "untouched model, head calibrated": 0.64})


def test_our_points_one_per_configuration(rank):
    points, lines, captions = tables.our_points(rank, tables.quality_axis(rank), "f", x_metric="adapter_params")
    assert len(points) == 6 and set(points["n"]) == {3}
    assert sorted(set(points["series"])) == ["LoRA", "MoRe", "MoRe (square blocks)"]
    assert captions[0] == ("ours: model minilm · task cola · steps 20, batch 8, seq_len 64 · device cpu · 3 seeds · "
                           "one learning rate per arm, none searched here")
    assert captions[1] == "bands and bars: 95% intervals over 3 seeds"


def test_this_machines_points_beside_the_reference_machines(tmp_path):
    here_dir, reference_dir = tmp_path / "here", tmp_path / "reference"
    here = write_study(here_dir, rank_records(seeds=(0, 1, 2)))
    # the same trials (the same ids: seed 0) measured elsewhere, with other values
    elsewhere = [{**r, "rows": [{**m, "value": m["value"] + 0.1} if m["metric"] == "test_matthews" else m
                                for m in r["rows"]]} for r in rank_records(seeds=(0,))]
    reference = write_study(reference_dir, elsewhere)
    both = tables.study_results("rank_ablation", here_dir, reference_dir)
    points, lines, captions = tables.our_points(both, tables.quality_axis(both), "f", x_metric="adapter_params")
    assert list(dict.fromkeys(points["source"])) == [THIS_MACHINE, REFERENCE_MACHINE]
    for source, frame, seeds in ((THIS_MACHINE, here, 3), (REFERENCE_MACHINE, reference, 1)):
        trials = tables.per_trial(frame, ["test_matthews"])
        expected = trials[trials["adapter"] != "none"].groupby("arm")["test_matthews"].mean() * 100
        ours = points[points["source"] == source].set_index("arm")
        assert ours["y"].to_dict() == pytest.approx(expected.to_dict()) and set(ours["n"]) == {seeds}
    controls = lines[lines["text"] == "control: head only"]
    assert controls["source"].tolist() == [THIS_MACHINE, REFERENCE_MACHINE]
    assert captions[0].startswith("this machine: model minilm") and captions[0].endswith(
        "· 3 seeds · one learning rate per arm, none searched here")
    assert captions[1].startswith("reference machine (2-core CPU): model minilm") and "· 1 seed ·" in captions[1]
    alone = tables.study_results("rank_ablation", tmp_path / "nothing", reference_dir)
    assert set(alone["source"]) == {REFERENCE_MACHINE}  # the reference alone, as `--paper` draws it with no runs here
    assert tables.study_results("rank_ablation", tmp_path / "nothing") is None
    assert machine_of(REFERENCE_DIR) == REFERENCE_MACHINE and machine_of(here_dir) == THIS_MACHINE
    assert reference_beside(REFERENCE_DIR) is None and reference_beside(None) == REFERENCE_DIR


def test_captions_say_how_each_rate_was_chosen_over_how_many_seeds(tmp_path):
    results = write_study(tmp_path, rank_records("three_rates", seeds=(0, 1), lrs=(1e-2, 1e-3, 1e-4)))
    _, _, captions = tables.our_points(results, tables.quality_axis(results), "f", x_metric="adapter_params")
    assert captions[0].endswith("· 2 seeds · best of 3 learning rates on validation")
    assert captions[1] == "bands and bars: 95% intervals over 2 seeds"


def test_a_time_caption_says_whether_trials_shared_the_machine(tmp_path):
    write_study(tmp_path / "shared", [{**r, "jobs": 2} for r in efficiency_records()])
    write_study(tmp_path / "older", [{k: v for k, v in r.items() if k != "jobs"} for r in efficiency_records()])
    alone = write_study(tmp_path / "alone", efficiency_records())
    assert tables.describe_sharing(alone) == "time per step: ours: one trial at a time"
    both = tables.study_results("efficiency", tmp_path / "shared", tmp_path / "older")
    assert tables.describe_sharing(both) == (
        "time per step: this machine: 2 trials ran at a time, sharing the machine; reference machine (2-core CPU): "
        "trials may have shared the machine (how many ran at a time was not recorded)")


def test_pareto_mask():
    cost = np.array([1.0, 2.0, 3.0, 2.5])
    quality = np.array([0.5, 0.7, 0.9, 0.6])
    assert tables.pareto_mask(cost, quality, higher_is_better=True).tolist() == [True, True, True, False]
    assert tables.pareto_mask(cost, quality, higher_is_better=False).tolist() == [True, False, False, False]


def test_cost_metric_takes_the_first_measured_candidate(rank, efficiency):
    assert tables.cost_metric(efficiency, "memory")[0] == "peak_rss_bytes"  # no CUDA: RSS instead
    assert tables.cost_metric(efficiency, "flops")[0] == "flops_train_step"
    with pytest.raises(tables.NothingToDraw, match="flops_train_step, flops_forward"):
        tables.cost_metric(rank, "flops")
    with pytest.raises(ValueError, match="cost must be one of"):
        tables.cost_metric(rank, "energy")


def test_commonsense_grid_puts_ours_under_the_papers(tmp_path):
    ours = write_study(tmp_path, commonsense_records())
    grid, paper_rows, captions = tables.commonsense_grid(paper.commonsense(), ours)
    assert paper_rows == 6 and len(grid) == 8 and list(grid.columns) == paper.COMMONSENSE_TASKS
    more = grid.loc["ours · minilm · MoRe k=4 r=4 · 20 steps"]
    assert more[["BoolQ", "PIQA", "SIQA"]].tolist() == pytest.approx([65.0, 58.0, 43.0])
    assert more[["HellaSwag", "Avg"]].isna().all()  # Avg only when all eight tasks ran
    assert captions[-1] == "ours: Avg left blank unless all eight tasks ran"
    alone, _, captions = tables.commonsense_grid(paper.commonsense())
    assert len(alone) == 6 and len(captions) == 1


def test_a_missing_column_is_named(rank):
    with pytest.raises(tables.MissingColumns, match=r"f: the table lacks column\(s\) bogus, other; it needs model"):
        tables.require(rank, ["model", "bogus", "other"], "f")
