"""harness.figures on small tidy tables made here, and the paper's numbers under results/paper/."""
from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pandas as pd
import pytest

from harness import figures, paper
from harness.store import Store, load

# ---- synthetic studies, written through the real store so that `load` gives the real shape ------------

MORE_RANKS = [{"nblocks": 4, "blk_r": r} for r in (1, 2, 4)]
SQUARE = {"blk_sz": 4, "blk_r": 4}
LORA_RANKS = [{"r": r, "lora_alpha": 2 * r} for r in (2, 4)]
STEPS = 20


def row(metric, value, unit, step=None, scope="", note=""):
    return {"metric": metric, "value": float(value), "unit": unit, "step": step, "scope": scope, "note": note}


def record(study, config, rows, device="cpu"):
    trial_id = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    return {"trial_id": trial_id, "study": study, "status": "ok", "config": config, "rows": rows,
            "device": device, "env": {"git_commit": "test"}, "duration_s": 1.0}


def adapter_count(method, params, hidden=384, matrices=18):
    rank = params.get("blk_r", params.get("r"))
    return rank * 2 * hidden * matrices


def training_rows(count, seed, skill):
    """A plausible training trial: quality improves with log parameters, plus seed noise."""
    noise = np.random.default_rng(seed * 1000 + count % 997).normal(0, 0.01)
    mcc = 0.15 + skill * math.log10(count / 1e4) + noise
    loss = 0.62 - 0.5 * skill * math.log10(count / 1e4) - noise
    rows = [row("trainable_params", count + 770, "params"), row("adapter_params", count, "params"),
            row("trainable_params", count / 18, "params", scope="encoder.layer.0.attention.self.query"),
            row("baseline_matthews", 0.0, "ratio", note="majority class"),
            row("eval_loss", 0.69, "nats", step=0), row("eval_loss_se", 0.01, "nats", step=0),
            row("eval_matthews", 0.0, "ratio", step=0), row("eval_matthews_se", 0.05, "ratio", step=0),
            row("peak_rss_bytes", 8e8 + 40 * count, "bytes"), row("time_step_s", 0.4 + count * 1e-6, "s",
                                                                    note="mean over the training run")]
    rows += [row("train_loss", 0.69 - 0.002 * s, "nats", step=s) for s in range(1, 4)]
    final = [row("eval_loss", loss, "nats"), row("eval_loss_se", 0.012, "nats"),
             row("eval_matthews", mcc, "ratio"), row("eval_matthews_se", 0.04, "ratio")]
    return rows + [dict(r, step=STEPS) for r in final] + final


def training_config(method, params, seed, lr=1e-3, label=None, task="cola"):
    config = {"model": "minilm", "task": task, "adapter": method, "adapter_params": params, "target_modules": None,
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
                count = adapter_count(method, params)
                records.append(record(study, training_config(method, params, seed, lr, label),
                                      training_rows(count, seed, skill * (1 if lr == 1e-3 else 0.5))))
    return records


def block_records(study="block_ablation"):
    return [record(study, training_config("more", {"nblocks": k, "blk_r": 4}, seed),
                   training_rows(adapter_count("more", {"blk_r": 4}) + k, seed, 0.05 - 0.005 * k))
            for k in (1, 2, 4, 8) for seed in (0, 1)]


def efficiency_records(study="efficiency"):
    """Two models, two sequence lengths; the paper-scale model is on the meta device: counts only."""
    records = []
    for model in ("minilm", "roberta-large@paper"):
        meta = model.endswith("@paper")
        for seq_len in (64, 256):
            for method, params in [("more", {"nblocks": 4, "blk_r": 4}), ("lora", {"r": 8, "lora_alpha": 16})]:
                count = adapter_count(method, params) * (4 if meta else 1)
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
                records.append(record(study, config, rows, device="meta" if meta else "cpu"))
    return records


def commonsense_records(study="commonsense"):
    records = []
    for task in ("boolq", "piqa", "siqa"):
        for method, params in [("more", {"nblocks": 4, "blk_r": 4}), ("lora", {"r": 4, "lora_alpha": 8})]:
            accuracy = {"boolq": 0.62, "piqa": 0.55, "siqa": 0.4}[task] + (0.03 if method == "more" else 0.0)
            rows = [row("adapter_params", adapter_count(method, params), "params"),
                    row("eval_accuracy", accuracy, "ratio"), row("eval_accuracy_se", 0.03, "ratio"),
                    row("eval_loss", 0.6, "nats"), row("eval_loss_se", 0.01, "nats")]
            records.append(record(study, training_config(method, params, 0, task=task), rows))
    return records


def write_study(results_dir, records):
    store = Store(records[0]["study"], results_dir)
    for r in records:
        store.write(r)
    return load(records[0]["study"], results_dir)


def write_all_studies(results_dir):
    """rank_ablation, block_ablation, efficiency and commonsense under results_dir; returns their frames."""
    return {name: write_study(results_dir, make()) for name, make in
            [("rank_ablation", rank_records), ("block_ablation", block_records),
             ("efficiency", efficiency_records), ("commonsense", commonsense_records)]}


@pytest.fixture(autouse=True)
def fast_rendering(monkeypatch):
    """Fewer pixels and Type 3 fonts: these tests check what is drawn, not how finely; it halves their time."""
    monkeypatch.setitem(figures.STYLE, "savefig.dpi", 80)
    monkeypatch.setitem(figures.STYLE, "pdf.fonttype", 3)


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
    save = figures.save

    def keep(fig, out_dir, name):
        figs.append(fig)
        return save(fig, out_dir, name)

    monkeypatch.setattr(figures, "save", keep)
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
    paths = figures.quality_vs_params(studies[1]["rank_ablation"], paper.more_vs_lora(), out_dir=tmp_path)
    assert_written(paths)
    assert paths[0].name == "quality_vs_params_matthews.png"
    (ax,) = drawn[0].axes  # our MCC and the paper's MCC share the axis
    assert "Matthews" in ax.get_ylabel()
    labels = ax.get_legend_handles_labels()[1]
    assert any(label.startswith("paper · RoBERTa-large / CoLA") for label in labels)
    assert any(label.startswith("ours · minilm / cola · MoRe (square blocks)") for label in labels)
    assert any(label.startswith("untrained: majority class") for label in labels)


def test_quality_vs_params_on_held_out_loss_keeps_the_paper_apart(studies, tmp_path, drawn):
    paths = figures.quality_vs_params(studies[1]["rank_ablation"], paper.more_vs_lora(), out_dir=tmp_path,
                                      quality="loss")
    assert_written(paths)
    ours, theirs = drawn[0].axes  # the paper's MCC never shares the loss axis
    assert "held-out loss" in ours.get_ylabel() and "lower is better" in ours.get_ylabel()
    assert "Matthews" in theirs.get_ylabel()
    assert "quality axis: held-out loss (lower is better)" in drawn[0]._suptitle.get_text()


def test_quality_vs_params_paper_alone(tmp_path):
    assert_written(figures.quality_vs_params(None, paper.more_vs_lora(), out_dir=tmp_path, name="paper_only"))


def test_quality_vs_params_picks_the_best_learning_rate(tmp_path, drawn):
    results = write_study(tmp_path / "results", rank_records("lr_sweep", seeds=(0,), lrs=(1e-3, 1e-4)))
    assert_written(figures.quality_vs_params(results, out_dir=tmp_path))
    assert "best of 2 learning rates" in drawn[0]._suptitle.get_text()
    assert "1 s.e. of the eval set" in drawn[0]._suptitle.get_text()


def test_quality_vs_nblocks(studies, tmp_path):
    results = studies[1]["block_ablation"]
    assert_written(figures.quality_vs_nblocks(results, paper.nblocks(), out_dir=tmp_path))
    assert_written(figures.quality_vs_nblocks(results, paper.nblocks(), out_dir=tmp_path, quality="loss"))


def test_cost_panels_facet_models_and_sequence_lengths(studies, tmp_path, drawn):
    paths = figures.cost_panels(studies[1]["efficiency"], out_dir=tmp_path)
    assert_written(paths, count=4)
    assert {p.stem for p in paths} == {"cost_params", "cost_flops", "cost_memory", "cost_time"}
    time_figure = drawn[-1]
    assert len(time_figure.axes) == 4  # 2 models x 2 sequence lengths
    texts = [t.get_text() for ax in time_figure.axes for t in ax.texts]
    assert any("meta device" in t for t in texts)  # the meta model's facets say why they are empty


def test_cost_panels_of_a_training_study_skip_what_was_not_measured(studies, tmp_path, capsys):
    paths = figures.cost_panels(studies[1]["rank_ablation"], out_dir=tmp_path)
    assert {p.stem for p in paths} == {"cost_params", "cost_memory", "cost_time"}
    assert "skipped flops" in capsys.readouterr().out


@pytest.mark.parametrize("cost", ["memory", "time", "params"])
def test_pareto_front(studies, tmp_path, cost):
    assert_written(figures.pareto_front(studies[1]["rank_ablation"], out_dir=tmp_path, cost=cost))


def test_pareto_mask():
    cost = np.array([1.0, 2.0, 3.0, 2.5])
    quality = np.array([0.5, 0.7, 0.9, 0.6])
    assert figures.pareto_mask(cost, quality, higher_is_better=True).tolist() == [True, True, True, False]
    assert figures.pareto_mask(cost, quality, higher_is_better=False).tolist() == [True, False, False, False]


def test_commonsense_heatmap_with_ours(studies, tmp_path, drawn):
    assert_written(figures.commonsense_heatmap(paper.commonsense(), studies[1]["commonsense"], out_dir=tmp_path))
    rows = [t.get_text() for t in drawn[0].axes[0].get_yticklabels()]
    assert rows[0] == "paper · LoRA r=32 · 53.3M (0.830%)"
    assert any(r.startswith("ours · minilm · MoRe k=4 r=4") for r in rows)


def test_quality_axis_says_what_it_is():
    loss = figures.quality_axis(None, "loss")
    assert loss.axis_label == "held-out loss (nats, lower is better)"
    assert loss.subtitle == "quality axis: held-out loss (lower is better)"
    assert "Matthews" in figures.quality_axis(None, "metric", "matthews").axis_label


# ---- clear errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize("figure, kwargs, column", [
    (figures.quality_vs_params, {}, "adapter"),
    (figures.quality_vs_nblocks, {}, "nblocks"),
    (figures.cost_panels, {}, "model"),
    (figures.pareto_front, {}, "metric"),
])
def test_a_missing_column_is_named(studies, tmp_path, figure, kwargs, column):
    source = studies[1]["block_ablation" if figure is figures.quality_vs_nblocks else "rank_ablation"]
    with pytest.raises(ValueError, match=rf"lacks column\(s\) {column}"):
        figure(source.drop(columns=column), out_dir=tmp_path, **kwargs)


def test_a_missing_paper_column_is_named(studies, tmp_path):
    with pytest.raises(ValueError, match=r"lacks column\(s\) value"):
        figures.quality_vs_params(studies[1]["rank_ablation"], paper.more_vs_lora().drop(columns="value"),
                                  out_dir=tmp_path)
    with pytest.raises(ValueError, match=r"lacks column\(s\) accuracy"):
        figures.commonsense_heatmap(paper.commonsense().drop(columns="accuracy"), out_dir=tmp_path)


def test_no_training_trials_is_nothing_to_draw(studies, tmp_path):
    with pytest.raises(figures.NothingToDraw, match="no training trials"):
        figures.quality_vs_params(studies[1]["efficiency"], out_dir=tmp_path)


# ---- a study's figures, the paper's figures, the command line ---------------------------------------

def test_draw_study_draws_what_applies(studies, tmp_path):
    root = studies[0]
    rank = figures.draw_study("rank_ablation", root, out_dir=tmp_path / "rank")
    assert {p.stem for p in rank} >= {"quality_vs_params_matthews", "quality_vs_params_loss", "pareto_memory_matthews",
                                      "pareto_time_loss", "cost_params", "cost_time"}
    blocks = figures.draw_study("block_ablation", root, out_dir=tmp_path / "blocks")
    assert {p.stem for p in blocks} >= {"quality_vs_nblocks_matthews", "quality_vs_nblocks_loss", "cost_memory"}
    assert not any(p.stem.startswith("pareto") for p in blocks)
    efficiency = figures.draw_study("efficiency", root)  # default folder: results/<study>/figures
    assert {p.parent for p in efficiency} == {root / "efficiency" / "figures"}
    assert {p.stem for p in efficiency} == {"cost_params", "cost_flops", "cost_memory", "cost_time"}


def test_draw_study_without_results_says_so(tmp_path, capsys):
    assert figures.draw_study("rank_ablation", tmp_path) == []
    assert "no results" in capsys.readouterr().out


def test_draw_paper_beside_ours(studies, tmp_path):
    paths = figures.draw_paper(tmp_path, results_dir=studies[0])
    assert {p.stem for p in paths} == {"more_vs_lora_metric", "more_vs_lora_loss", "nblocks_metric",
                                       "nblocks_loss", "commonsense"}
    assert_written(paths, count=5)


def test_command_line(studies, tmp_path):
    root = tmp_path / "results"
    write_study(root, efficiency_records())
    assert figures.main(["efficiency", "--results-dir", str(root)]) == 0
    assert (root / "efficiency" / "figures" / "cost_time.pdf").exists()
