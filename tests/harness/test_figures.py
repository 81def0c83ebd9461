"""harness.figures drawing from small synthetic studies, and the paper's numbers under results/paper/."""
from __future__ import annotations

import argparse

import pytest
from synthetic_studies import (LORA_RANKS, MORE_RANKS, counting_records, efficiency_records, in_turn_record,
                               rank_records, write_all_studies, write_study)

from harness import paper
from harness.figures import cli, registry, style, tables
from harness.figures.commonsense import commonsense_heatmap
from harness.figures.cost import cost_panels
from harness.figures.pareto import pareto_front
from harness.figures.quality_nblocks import quality_vs_nblocks
from harness.figures.quality_params import quality_vs_params


@pytest.fixture(autouse=True)
def fast_rendering(monkeypatch):
    """Fewer pixels and Type 3 fonts: these tests check what is drawn, not how finely; it halves their time."""
    monkeypatch.setitem(style.STYLE, "savefig.dpi", 80)
    monkeypatch.setitem(style.STYLE, "pdf.fonttype", 3)


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    return root, write_all_studies(root)


def assert_written(paths, count=1):
    assert len(paths) == 2 * count
    assert {p.suffix for p in paths} == {".png", ".pdf"}
    for path in paths:
        assert path.exists() and path.stat().st_size > 1000, path


@pytest.fixture
def drawn(monkeypatch):
    """The figures saved, kept for inspection."""
    figs = []
    save = style.save

    def keep(fig, out_dir, name):
        figs.append(fig)
        return save(fig, out_dir, name)

    monkeypatch.setattr(style, "save", keep)
    return figs


# ---- the paper's numbers -------------------------------------------------------------------------

def test_paper_commonsense_table_holds_table_1():
    table = paper.commonsense().pivot_table(index="method", columns="task", values="accuracy")
    expected = {
        "LoRA r=32": [68.9, 80.7, 77.4, 78.1, 78.8, 77.8, 61.3, 74.8, 74.7],
        "LoRA r=32, 13B": [72.1, 83.5, 80.5, 90.5, 83.7, 82.8, 68.3, 82.4, 80.5],
        "MoRe, q/k/v": [67, 86.4, 88.4, 97.3, 95.1, 88.5, 76.6, 79.9, 84.9],
        "ReFT": [69.3, 84.4, 80.3, 93.1, 84.2, 83.2, 68.2, 78.9, 80.2],
        "ReFT, 13B": [72.1, 86.3, 81.8, 95.1, 87.2, 86.2, 73.7, 84.2, 83.3],
        "DoRA": [72.4, 84.9, 81.5, 92.4, 84.2, 84.2, 69.6, 82.8, 81.5],
    }
    assert sorted(table.index) == sorted(expected)
    for method, values in expected.items():
        assert table.loc[method, paper.COMMONSENSE_TASKS].tolist() == values, method
    params = paper.commonsense().drop_duplicates("method").set_index("method")
    assert params.loc["LoRA r=32", "params"] == "53.3M (0.830%)"
    assert params.loc["MoRe, q/k/v", ["params_millions", "params_percent"]].tolist() == [3.0, 0.047]
    assert params.loc["DoRA", ["params_millions", "params_percent"]].tolist() == [84.4, 0.68]
    assert params.loc["ReFT, 13B", "model"] == "LLaMA-13B"


def test_paper_more_vs_lora_holds_the_cola_figure():
    table = paper.more_vs_lora()
    assert set(table["model"]) == {"RoBERTa-large"} and set(table["task"]) == {"CoLA"}

    def series(adapter, label=""):
        rows = table[(table["adapter"] == adapter) & (table["label"] == label)]
        return list(zip(rows["params_millions"], rows["value"]))

    assert series("more") == [(0.14, 69.8), (0.28, 68.54), (0.56, 69.91), (1.13, 69.51), (2.25, 69.98)]
    assert series("lora") == [(0.38, 65.05), (0.76, 68.3), (1.52, 68.0)]
    assert series("more", "square blocks") == [(0.14, 55.76), (0.56, 62.39), (2.25, 68.88), (4.5, 67.9), (9.0, 70.29)]
    assert table.loc[table["adapter"] == "lora", "r"].tolist() == [4, 8, 16]
    square = table[table["label"] == "square blocks"]
    assert square["blk_sz"].tolist() == square["blk_r"].tolist() == [1, 4, 16, 32, 64]
    # 0.14 "M" is 147,456 parameters (MoRe, blk_r 1, on q, k, v of 24 layers of 1024): the unit is 2^20.
    assert table["adapter_params"].iloc[0] == round(0.14 * 2**20)


def test_paper_nblocks_holds_the_ablation():
    table = paper.nblocks()
    assert list(zip(table["nblocks"], table["value"])) == [(2, 68.1), (4, 69.91), (8, 67.02), (16, 63.91), (32, 63.0)]


# ---- each figure function ---------------------------------------------------------------------------

def test_quality_vs_params_with_the_paper_on_one_axis(studies, tmp_path, drawn):
    paths = quality_vs_params(studies[1]["rank_ablation"], paper.more_vs_lora(), out_dir=tmp_path)
    assert_written(paths)
    assert paths[0].name == "quality_vs_params_matthews.png"
    (ax,) = drawn[0].axes  # our MCC and the paper's MCC share the axis
    assert "Matthews" in ax.get_ylabel()
    labels = ax.get_legend_handles_labels()[1]
    assert any(label.startswith("paper · RoBERTa-large / CoLA") for label in labels)
    assert any(label.startswith("ours · minilm / cola · MoRe (square blocks)") for label in labels)
    assert any(label.startswith("chance: majority class") for label in labels)
    assert any(label.startswith("control: head only") for label in labels)
    assert any(label.startswith("untouched model, head calibrated") for label in labels)


def test_quality_vs_params_on_held_out_loss_keeps_the_paper_apart(studies, tmp_path, drawn):
    paths = quality_vs_params(studies[1]["rank_ablation"], paper.more_vs_lora(), out_dir=tmp_path,
                                      quality="loss")
    assert_written(paths)
    ours, theirs = drawn[0].axes  # the paper's MCC never shares the loss axis
    assert "test loss" in ours.get_ylabel() and "lower is better" in ours.get_ylabel()
    assert "Matthews" in theirs.get_ylabel()
    assert "quality axis: test-split loss (lower is better)" in drawn[0]._suptitle.get_text()


def test_quality_vs_params_paper_alone(tmp_path):
    assert_written(quality_vs_params(None, paper.more_vs_lora(), out_dir=tmp_path, name="paper_only"))


def test_quality_vs_params_picks_the_best_learning_rate(tmp_path, drawn):
    results = write_study(tmp_path / "results", rank_records("lr_sweep", seeds=(0,), lrs=(1e-3, 1e-4)))
    assert_written(quality_vs_params(results, out_dir=tmp_path))
    assert "best of 2 learning rates" in drawn[0]._suptitle.get_text()
    assert "1.96 s.e. of the test set" in drawn[0]._suptitle.get_text()


def test_quality_vs_nblocks(studies, tmp_path, drawn):
    results = studies[1]["block_ablation"]
    assert_written(quality_vs_nblocks(results, paper.nblocks(), out_dir=tmp_path))
    labels = drawn[0].axes[0].get_legend_handles_labels()[1]  # the references train no MoRe, and are drawn
    assert any(label.startswith("control: head only") for label in labels)
    assert any(label.startswith("untouched model, head calibrated") for label in labels)
    assert_written(quality_vs_nblocks(results, paper.nblocks(), out_dir=tmp_path, quality="loss"))


def test_cost_panels_facet_models_and_sequence_lengths(studies, tmp_path, drawn):
    paths = cost_panels(studies[1]["efficiency"], out_dir=tmp_path)
    assert_written(paths, count=4)
    assert {p.stem for p in paths} == {"cost_params", "cost_flops", "cost_memory", "cost_time"}
    time_figure = drawn[-1]
    assert len(time_figure.axes) == 4  # 2 models x 2 sequence lengths
    texts = [t.get_text() for ax in time_figure.axes for t in ax.texts]
    assert any("meta device" in t for t in texts)  # the meta model's facets say why they are empty


def test_cost_panels_of_a_training_study_skip_what_was_not_measured(studies, tmp_path, capsys):
    paths = cost_panels(studies[1]["rank_ablation"], out_dir=tmp_path)
    assert {p.stem for p in paths} == {"cost_params", "cost_memory", "cost_time"}
    assert "skipped flops" in capsys.readouterr().out


def test_a_training_study_draws_the_flops_its_counting_trials_measured(tmp_path, drawn):
    results = write_study(tmp_path / "results", rank_records(seeds=(0,)) + counting_records())
    paths = cost_panels(results, out_dir=tmp_path, costs=("flops",))
    assert {p.stem for p in paths} == {"cost_flops"}
    title = drawn[-1]._suptitle.get_text().replace("\n", " ")
    assert "counted by torch's FLOP counter" in title and "16 sequences of 64 tokens" in title  # the counted shape
    assert "batch 8," in title and "16" not in title.split("FLOPs:")[0]  # the budget is the training trials'
    bars = drawn[-1].axes[0].patches
    assert len(bars) == len(MORE_RANKS) + len(LORA_RANKS)  # one per configuration, no reference


@pytest.mark.parametrize("counted", [True, False], ids=["beside counting trials", "training trials only"])
def test_a_training_study_draws_the_step_times_its_interleaved_trial_measured(tmp_path, drawn, counted):
    others = counting_records() if counted else []  # the arms are named by whichever trials ran them
    results = write_study(tmp_path / "results", rank_records(seeds=(0,)) + others + [in_turn_record()])
    cost_panels(results, out_dir=tmp_path, costs=("time",))
    title = drawn[-1]._suptitle.get_text().replace("\n", " ")
    assert "timed in turn" in title and "median of 10 rounds" in title and "16 sequences of 64 tokens" in title
    assert "mean step time over the run" not in title  # the training trials' own times are not the ones drawn
    ax = drawn[-1].axes[0]
    drawn_ms = {tick.get_text(): round(bar.get_width()) for tick, bar in zip(ax.get_yticklabels(), ax.patches)}
    assert drawn_ms == {"MoRe k=4 r=1": 500, "MoRe k=4 r=2": 600, "MoRe k=4 r=4": 700, "LoRA r=2": 800,
                        "LoRA r=4": 900}  # each configuration at its own time, in ms


@pytest.mark.parametrize("cost", ["memory", "time", "params"])
def test_pareto_front(studies, tmp_path, cost):
    assert_written(pareto_front(studies[1]["rank_ablation"], out_dir=tmp_path, cost=cost))


def test_commonsense_heatmap_with_ours(studies, tmp_path, drawn):
    assert_written(commonsense_heatmap(paper.commonsense(), studies[1]["commonsense_tasks"], out_dir=tmp_path))
    rows = [t.get_text() for t in drawn[0].axes[0].get_yticklabels()]
    assert rows[0] == "paper · LoRA r=32 · 53.3M (0.830%)"
    assert any(r.startswith("ours · minilm · MoRe k=4 r=4") for r in rows)


def test_quality_axis_says_what_it_is():
    loss = tables.quality_axis(None, "loss")
    assert loss.axis_label == "test loss (nats, lower is better)"
    assert loss.subtitle == "quality axis: test-split loss (lower is better)"
    assert "Matthews" in tables.quality_axis(None, "metric", "matthews").axis_label


# ---- clear errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize("figure, kwargs, column", [
    (quality_vs_params, {}, "adapter"),
    (quality_vs_nblocks, {}, "nblocks"),
    (cost_panels, {}, "model"),
    (pareto_front, {}, "metric"),
])
def test_a_missing_column_is_named(studies, tmp_path, figure, kwargs, column):
    source = studies[1]["block_ablation" if figure is quality_vs_nblocks else "rank_ablation"]
    with pytest.raises(ValueError, match=rf"lacks column\(s\) {column}"):
        figure(source.drop(columns=column), out_dir=tmp_path, **kwargs)


def test_a_missing_paper_column_is_named(studies, tmp_path):
    with pytest.raises(ValueError, match=r"lacks column\(s\) value"):
        quality_vs_params(studies[1]["rank_ablation"], paper.more_vs_lora().drop(columns="value"),
                                  out_dir=tmp_path)
    with pytest.raises(ValueError, match=r"lacks column\(s\) accuracy"):
        commonsense_heatmap(paper.commonsense().drop(columns="accuracy"), out_dir=tmp_path)


def test_no_training_trials_is_nothing_to_draw(studies, tmp_path):
    with pytest.raises(tables.NothingToDraw, match="no training trials"):
        quality_vs_params(studies[1]["efficiency"], out_dir=tmp_path)


# ---- a study's figures, the paper's figures, the command line ---------------------------------------

def test_the_registry_picks_figures_from_what_the_tables_hold(studies):
    frames = studies[1]
    assert registry.figures_for(frames["rank_ablation"]) == ["quality_vs_params", "pareto", "cost"]
    assert registry.figures_for(frames["block_ablation"]) == ["quality_vs_nblocks", "cost"]
    assert registry.figures_for(frames["efficiency"]) == ["cost"]
    assert registry.figures_for(frames["commonsense_tasks"]) == ["quality_vs_params", "pareto", "commonsense", "cost"]


def test_draw_study_draws_what_applies(studies, tmp_path):
    root = studies[0]
    rank = registry.draw_study("rank_ablation", root, out_dir=tmp_path / "rank")
    assert {p.stem for p in rank} == {f"quality_vs_params_{q}" for q in ("matthews", "loss")} | {
        f"pareto_{cost}_{q}" for cost in ("memory", "time", "params") for q in ("matthews", "loss")} | {
        "cost_params", "cost_memory", "cost_time"}
    assert_written(rank, count=11)
    blocks = registry.draw_study("block_ablation", root, out_dir=tmp_path / "blocks")
    assert {p.stem for p in blocks} == {"quality_vs_nblocks_matthews", "quality_vs_nblocks_loss", "cost_params",
                                        "cost_memory", "cost_time"}
    efficiency = registry.draw_study("efficiency", root)  # default folder: results/<study>/figures
    assert {p.parent for p in efficiency} == {root / "efficiency" / "figures"}
    assert {p.stem for p in efficiency} == {"cost_params", "cost_flops", "cost_memory", "cost_time"}


def test_a_study_with_commonsense_tasks_gets_the_commonsense_table(studies, tmp_path):
    paths = registry.draw_study("commonsense_tasks", studies[0], out_dir=tmp_path)
    assert "commonsense" in {p.stem for p in paths}


def test_draw_study_without_results_says_so(studies, tmp_path, capsys):
    assert registry.draw_study("rank_ablation", tmp_path) == []
    assert "no results" in capsys.readouterr().out
    # the reference machine's results alone are not this machine's study: they are drawn from their own folder
    assert registry.draw_study("rank_ablation", tmp_path, reference_dir=studies[0]) == []
    assert "--results-dir results/reference" in capsys.readouterr().out


def test_draw_study_draws_the_reference_machines_points_beside_this_machines(tmp_path, drawn):
    here, reference = tmp_path / "here", tmp_path / "reference"
    write_study(here, [{**r, "jobs": 2} for r in rank_records(seeds=(0, 1))])
    write_study(reference, rank_records(seeds=(0,)))
    paths = registry.draw_study("rank_ablation", here, reference_dir=reference)
    assert {p.parent for p in paths} == {here / "rank_ablation" / "figures"}
    figures = dict(zip([p.stem for p in paths[::2]], drawn))
    labels = figures["quality_vs_params_matthews"].axes[0].get_legend_handles_labels()[1]
    for source in ("this machine", "reference machine (2-core CPU)"):
        assert f"{source} · minilm / cola · MoRe" in labels
        assert f"control: head only · {source} · minilm / cola" in labels
        assert f"{source} · LoRA" in figures["pareto_time_matthews"].axes[0].get_legend_handles_labels()[1]
    caption = figures["cost_time"]._suptitle.get_text().replace("\n", " ")
    assert "bars: this machine solid, reference machine (2-core CPU) hatched and fainter beneath" in caption
    assert "this machine: 2 trials ran at a time, sharing the machine" in caption
    assert "reference machine (2-core CPU): one trial at a time" in caption
    assert "2 trials ran at a time" in figures["pareto_time_matthews"]._suptitle.get_text().replace("\n", " ")


def test_draw_paper_beside_ours(studies, tmp_path):
    paths = registry.draw_paper(tmp_path, results_dir=studies[0])
    assert {p.stem for p in paths} == {"more_vs_lora_metric", "more_vs_lora_loss", "nblocks_metric",
                                       "nblocks_loss", "commonsense"}
    assert_written(paths, count=5)


def test_draw_paper_alone(tmp_path):
    paths = registry.draw_paper(tmp_path / "figures", results_dir=tmp_path / "no-results")
    assert {p.stem for p in paths} == {"more_vs_lora_metric", "nblocks_metric", "commonsense"}


def test_command_line(tmp_path, capsys):
    from harness.cli import main

    root = tmp_path / "results"
    write_study(root, efficiency_records())
    assert main(["figures", "efficiency", "--results-dir", str(root)]) == 0
    assert (root / "efficiency" / "figures" / "cost_time.pdf").exists()
    assert "efficiency: 4 figures in" in capsys.readouterr().out
    # every study with results when none is named
    args = cli.configure(argparse.ArgumentParser()).parse_args(["--results-dir", str(root)])
    assert args.studies == [] and cli.run(args) == 0
    assert "efficiency: 4 figures in" in capsys.readouterr().out
    assert cli.main(["--results-dir", str(tmp_path / "empty")]) == 0
    assert "nothing to draw" in capsys.readouterr().out


# ---- many methods at one size ---------------------------------------------------------------------

def test_series_of_nearly_one_size_are_spread_and_lines_keep_their_counts():
    import pandas as pd

    from harness.figures.quality_params import spread_shared_x

    points = pd.DataFrame({
        "series": ["MoRe", "LoRA", "vera", "ia3", "MoRe", "LoRA", "LoRA"],
        "x": [55_296, 55_296, 55_296, 6_912, 13_824, 13_824, 221_184],
        "source": ["a"] * 7})
    spread, largest = spread_shared_x(points)
    at_55k = spread[points["x"] == 55_296]
    assert at_55k["x"].nunique() == 3 and 0 < largest < 0.1  # three series at one count: moved apart, a little
    assert (spread.loc[points["x"] != 55_296, "x"] == points.loc[points["x"] != 55_296, "x"]).all()  # pairs stay
    # the same series at the same count moves by the same amount for every source
    twice = pd.concat([points, points.assign(source="b")])
    again, _ = spread_shared_x(twice)
    assert list(again["x"].iloc[:7]) == list(again["x"].iloc[7:])
    unchanged, none = spread_shared_x(points[points["series"].isin(["MoRe", "LoRA"])])
    assert none == 0.0 and unchanged["x"].tolist() == [55_296, 55_296, 13_824, 13_824, 221_184]
    # two series with one point each (a study of MoRe and LoRA at one size): nothing joins them, so they part
    pair, moved = spread_shared_x(points[points["x"] == 55_296].iloc[:2])
    assert pair["x"].nunique() == 2 and 0 < moved < 0.1
    # two series, one of them a line through other sizes: the line's point stays, so neither moves
    mixed = points[points["series"].isin(["MoRe", "vera"])]
    assert spread_shared_x(mixed)[0]["x"].tolist() == mixed["x"].tolist()


def test_one_point_series_are_named_inside_the_axes_without_squashing_the_panel():
    import matplotlib.pyplot as plt
    import pandas as pd

    from harness.figures.quality import SHORT_NAME, name_lone_points

    fig, (ax,) = style.new_figure(1)
    ax.set_xscale("log")
    points = {"MoRe": (14_000, 70.7, 75.7), "LoRA (16x the smallest MoRe)": (221_184, 53.1, 95.4)}
    for x, y, hi in points.values():
        ax.errorbar([x], [y], yerr=[[y - 10], [hi - y]])
    fig.canvas.draw()
    before = ax.get_window_extent().height
    name_lone_points(ax, [(name, pd.Series({"x": x, "y": y, "hi": hi})) for name, (x, y, hi) in points.items()],
                     {name: "k" for name in points})
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = ax.get_window_extent(renderer)
    assert box.height == pytest.approx(before)  # the names take no height from the axes
    names = {text.get_text(): text for text in ax.texts}
    assert set(names) == set(points)
    for name, text in names.items():
        extent = text.get_window_extent(renderer)
        assert box.y0 <= extent.y0 and extent.y1 <= box.y1 + 0.5, name  # drawn inside the axes, headroom added
        assert box.x0 <= extent.x0 and extent.x1 <= box.x1 + 0.5, name  # the long name at the right edge too
        assert text.get_rotation() == (90 if len(name) <= SHORT_NAME else 0)
    assert ax.get_ylim()[1] < 140  # headroom for the names only, not a doubled axis
    plt.close("all")


def test_the_paper_panel_sits_beside_studies_of_more_and_lora_only():
    import pandas as pd

    assert registry.only_more_and_lora(pd.DataFrame({"adapter": ["more", "lora", "none"]}))
    assert not registry.only_more_and_lora(pd.DataFrame({"adapter": ["more", "lora", "vera", "none"]}))


def test_a_dozen_series_get_a_dozen_colours():
    names = ["MoRe", "LoRA", *(f"method {i}" for i in range(10))]
    colours = style.series_colours(names)
    assert len({tuple(c) for c in colours.values()}) == len(names)
