"""The command line, in this process: list, dry runs, a quick measurement, and bad input that ends
with a message and exit status 2, never a traceback or a question to the hub."""
import argparse
import json

import pytest
import transformers

from harness.cli import build_parser, main


def run(capsys, *argv):
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def no_hub(monkeypatch):
    """Any question to the hub fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("the hub was asked")

    for auto in (transformers.AutoConfig, transformers.AutoTokenizer, transformers.AutoModel):
        monkeypatch.setattr(auto, "from_pretrained", refuse)


def test_list_names_studies_models_tasks_and_adapters(capsys):
    status, out, _ = run(capsys, "list")
    assert status == 0
    for name in ("rank_ablation", "efficiency", "minilm", "llama-7b@paper", "commonsenseqa", "more", "lora"):
        assert name in out, name


@pytest.mark.parametrize("command", [[], *([name] for name in next(
    action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction)).choices)])
def test_every_help_prints_and_exits_0(capsys, command):
    with pytest.raises(SystemExit) as stop:
        main([*command, "--help"])
    assert stop.value.code == 0 and "usage:" in capsys.readouterr().out


def test_dry_run_lists_the_trials_with_their_counts_on_the_meta_device(capsys):
    status, out, _ = run(capsys, "run", "rank_ablation", "--dry-run", "--profile", "cpu")
    # the search: 1 MoRe, 2 LoRA at 5 rates, at seed 0; the two references at each of the 3 seeds
    assert status == 0 and "21 trials" in out and "then the other seeds" in out and "6 more trials" in out
    lines = out.split("trial_id")[1].splitlines()
    more = next(line for line in lines if "more(blk_r=1,nblocks=4)" in line)
    assert "144 x 16" in more and "13,824" in more  # 18 matrices of 384 x 384 at 768 parameters each
    assert "221,184" in next(line for line in lines if "lora(lora_alpha=32,r=16)" in line)  # 16x MoRe's smallest
    for reference in (" head only ", " calibrated "):
        assert any(reference in line and line.split()[-1] == "0" for line in lines)


def test_dry_run_says_which_knob_value_each_method_was_matched_at(capsys):
    status, out, _ = run(capsys, "run", "methods", "--dry-run", "--profile", "cpu")
    assert status == 0
    plan = out.split("trial_id")[0].splitlines()

    def row(*parts):
        (line,) = [line for line in plan if all(part in line for part in parts)]
        return line.split()

    # entry, method, [label,] knob, its count, the MoRe configuration it matched and that one's count
    more = ["more(blk_r=1,nblocks=4)", "13,824"]
    assert row("vera", "r=384")[-3:] == ["13,824", *more]
    assert row("fourierft", "n_frequency=768")[-3:] == ["13,824", *more]
    assert row("boft", "boft_block_size=2")[-3:] == ["20,736", *more]
    assert row("DoRA", "r=1,use_dora=True")[-3:] == ["20,736", *more]  # LoRA r 1 and 18 magnitude vectors of 384
    assert row("ia3")[-4:] == ["own", "size", "6,912", "-"]  # no knob, matched to nothing
    (in_turn,) = [line for line in out.split("trial_id")[1].splitlines() if "in turn" in line]
    assert "step time of 11 in turn" in in_turn and "144 x 24" in in_turn  # 8 questions x 3 options, at 144 tokens
    methods = {line.split()[1] for line in plan if line.strip().startswith("adapters[")}
    assert methods == {"more", "lora", "vera", "boft", "oft", "loha", "lokr", "fourierft", "ia3", "c3a"}


def test_a_bad_study_exits_2_naming_file_and_key(capsys, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nmodels: [minilm]\nadapters: [{method: lora}]\nprofiles: {cpu: {step: 3}}\n")
    status, out, err = run(capsys, "run", str(path), "--dry-run")
    assert status == 2 and f"error: {path}: profiles.cpu.step: unknown key. Did you mean 'steps'?" in err
    assert "Traceback" not in err


def test_measure_on_minilm(capsys):
    status, out, _ = run(capsys, "measure", "--model", "minilm", "--adapter", "lora:r=4", "--what", "params",
                         "--seq-len", "8", "--batch", "1", "--json")
    assert status == 0
    result = json.loads(out)
    assert result["status"] == "ok" and result["config"]["kind"] == "measure"
    assert result["info"]["model_info"]["weights"] == "pretrained"
    adapter = next(r["value"] for r in result["rows"] if r["metric"] == "adapter_params" and not r["scope"])
    assert adapter == 18 * 4 * (384 + 384)
    status, out, _ = run(capsys, "measure", "--model", "minilm", "--adapter", "none", "--what", "params",
                         "--seq-len", "8", "--batch", "1")
    assert status == 0 and "+ no adapter" in out and "trainable_params" in out


@pytest.mark.parametrize("name", ["llama-7b", "roberta-large", "foo"])
def test_bare_model_names_exit_2_with_the_registry_message_from_every_command(capsys, tmp_path, no_hub, name):
    expected = f"Unknown model {name!r}."
    status, _, err = run(capsys, "measure", "--model", name)
    assert status == 2 and expected in err and "Registered names: minilm" in err
    study = tmp_path / "bare.yaml"
    study.write_text(f"name: bare\nmodels: [{name}]\nadapters: [{{method: lora}}]\n")
    status, _, err = run(capsys, "run", str(study), "--results-dir", str(tmp_path / "results"))
    assert status == 2 and f"{study}: models: {expected}" in err
    status, _, err = run(capsys, "compare", "--model", name, "--adapters", "lora:r=2", "--results-dir", str(tmp_path))
    assert status == 2 and expected in err
    assert not (tmp_path / "results").exists() and not list(tmp_path.glob("compare-*"))


def test_llama_7b_points_to_its_paper_architecture(capsys, no_hub):
    _, _, err = run(capsys, "measure", "--model", "llama-7b")
    assert "'llama-7b@paper'" in err and "'huggyllama/llama-7b'" in err


def test_bad_options_exit_2(capsys):
    status, _, err = run(capsys, "measure", "--model", "minilm", "--what", "flop")
    assert status == 2 and "measure: unknown measurement 'flop'. Did you mean 'flops'?" in err
    status, _, err = run(capsys, "measure", "--model", "minilm", "--adapter", "lora:rank=2")
    assert status == 2 and "Adapter 'lora' has no parameter 'rank'" in err


def test_a_profile_at_the_reference_rates_says_how_to_get_them_when_there_are_none(capsys, tmp_path):
    path = tmp_path / "nowhere.yaml"
    path.write_text("name: nowhere\nmodels: [minilm]\ntasks: [commonsenseqa]\n"
                    "adapters: [{method: lora, axes: {r: [1]}, lr: [1.0e-3, 1.0e-2]}]\n"
                    "profiles: {quick: {steps: 1, learning_rates: reference}}\n")
    status, _, err = run(capsys, "run", str(path), "--profile", "quick", "--dry-run")
    assert status == 2 and "the learning rate the reference machine's results chose" in err
    assert "has none for: lora(lora_alpha=2,r=1)" in err and "--profile cpu" in err and "Traceback" not in err
