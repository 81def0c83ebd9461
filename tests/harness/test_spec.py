"""Study files: expansion, filters, zip groups, parameter matching, stable ids, and every kind of bad file."""
import dataclasses

import pytest

from harness.adapters import AdapterSpec
from harness.spec import StudyError, load_study

BASE = """
name: grid
models: [minilm]
adapters:
{adapters}
profiles:
  cpu: {{steps: 10, batch: 2, seq_len: 16}}
  gpu: {{steps: 1000, batch: 32, seq_len: 256, seeds: [0, 1, 2]}}
"""


def study_file(tmp_path, adapters: str = "", text: str | None = None, name="grid"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(text if text is not None else BASE.format(adapters=adapters))
    return str(path)


def expand(tmp_path, adapters, profile="cpu"):
    return load_study(study_file(tmp_path, adapters), profile=profile).trials


def params_of(trials, method):
    return [t.adapter.params for t in trials if t.adapter and t.adapter.method == method]


def test_cartesian_product_zip_and_where(tmp_path):
    trials = expand(tmp_path, """
  - method: more
    axes: {nblocks: [2, 4], blk_r: [1, 2, 8]}
    where: ["blk_r * nblocks <= 8"]
  - method: more
    label: square blocks
    zip: {blk_sz: [4, 16], blk_r: [4, 16]}
    where: ["blk_r <= blk_sz"]
""")
    assert [(p["nblocks"], p["blk_r"]) for p in params_of(trials, "more") if "nblocks" in p] == [(2, 1), (2, 2), (4, 1), (4, 2)]
    square = [t for t in trials if t.label == "square blocks"]
    assert [(t.adapter.params["blk_sz"], t.adapter.params["blk_r"]) for t in square] == [(4, 4), (16, 16)]


def test_learning_rates_seeds_and_profiles(tmp_path):
    adapters = """
  - method: lora
    axes: {r: [4]}
    lr: [1.0e-4, 1.0e-3]
"""
    cpu = expand(tmp_path, adapters)
    gpu = expand(tmp_path, adapters, profile="gpu")
    assert [(t.lr, t.seed) for t in cpu] == [(1e-4, 0), (1e-3, 0)]
    assert len(gpu) == 6 and {t.steps for t in gpu} == {1000} and {t.seed for t in gpu} == {0, 1, 2}
    assert {t.kind for t in cpu} == {"measure"} and {t.profile for t in gpu} == {"gpu"}


def test_parameter_matching_picks_the_nearest_lora(tmp_path):
    trials = expand(tmp_path, """
  - method: more
    axes: {nblocks: [4], blk_r: [1, 4, 16]}
  - method: lora
    match: more
    axes: {r: [1, 2, 3, 4, 8, 16, 32, 64]}
""")
    # MiniLM's q, k, v are 384 x 384: MoRe blk_r b has b * 768 parameters per matrix, as LoRA r = b
    assert sorted(p["r"] for p in params_of(trials, "lora")) == [1, 4, 16]
    trials = expand(tmp_path, """
  - method: more
    axes: {nblocks: [4], blk_r: [3]}
  - method: lora
    match: more
    axes: {r: [2, 4, 8]}
""")
    assert [p["r"] for p in params_of(trials, "lora")] == [2]  # 3 is as near to 2 as to 4: the smaller wins


def test_every_method_is_matched_on_its_own_knob_by_its_count_on_the_meta_device(tmp_path):
    trials = expand(tmp_path, """
  - method: more
    axes: {nblocks: [4], blk_r: [1, 4]}
  - method: vera
    match: more
    axes: {r: [256, 384, 1024, 2688]}
  - method: oft
    match: more
    axes: {oft_block_size: [4, 8, 16]}
  - method: c3a
    match: more
    axes: {block_size: [100, 48, 192]}
  - method: ia3
""")
    # VeRA trains 384 + r scales per layer, OFT a skew-symmetric block per block, C3A 384 * 384 / block_size
    assert sorted(p["r"] for p in params_of(trials, "vera")) == [384, 2688]  # 18 * (384 + r): 13,824, 55,296
    assert sorted(p["oft_block_size"] for p in params_of(trials, "oft")) == [4, 16]  # 10,368, 51,840
    assert sorted(p["block_size"] for p in params_of(trials, "c3a")) == [48, 192]  # 100 does not divide 384
    assert params_of(trials, "ia3") == [{}]  # no knob: its own size
    trials = expand(tmp_path, """
  - method: more
    axes: {nblocks: [4], blk_r: [1]}
  - method: c3a
    match: more
    axes: {block_size: [100, 7]}
""")
    assert params_of(trials, "c3a") == [{"block_size": 100}]  # none builds: the first runs, and fails with PEFT's reason


def test_trial_ids_are_stable_and_change_with_any_value(tmp_path):
    adapters = "  - method: more\n    axes: {nblocks: [4], blk_r: [2]}\n"
    first, again = expand(tmp_path, adapters)[0], expand(tmp_path, adapters)[0]
    assert first.id == again.id and len(first.id) == 16
    for key, value in [("lr", 0.5), ("seed", 1), ("steps", 11), ("model", "smollm2"), ("repeats", 3)]:
        changed = dataclasses.replace(first, **{key: value})
        assert changed.id != first.id, key
    other_params = dataclasses.replace(first, adapter=AdapterSpec.make("more", {"nblocks": 4, "blk_r": 3}))
    assert other_params.id != first.id


@pytest.mark.parametrize("adapters,text,match", [
    ("  - method: more\n    axes: {nblocks: [4]}\n    lrr: [1]\n", None, r"adapters\[0\]\.lrr: unknown key\. Did you mean 'lr'\?"),
    ("  - method: more\n    axes: {nblocks: 4}\n", None, r"adapters\[0\]\.nblocks: an axis needs a non-empty list"),
    ("  - method: mora\n    axes: {r: [4]}\n", None, r"adapters\[0\]\.method: Unknown adapter 'mora'\. Did you mean 'more'"),
    ("  - method: lora\n    axes: {rank: [4]}\n", None, r"adapters\[0\]\.axes: Adapter 'lora' has no parameter 'rank'"),
    ("  - method: more\n    axes: {nblocks: []}\n", None, r"non-empty list"),
    ("  - method: more\n    axes: {nblocks: [2, 4], blk_r: [8]}\n    where: ['blk_r < nblocks']\n", None,
     r"adapters\[0\]\.where: the filters \['blk_r < nblocks'\] remove every point"),
    ("  - method: more\n    axes: {nblocks: [2]}\n    where: ['blk_sz > 1']\n", None, r"unknown axis 'blk_sz' in filter"),
    (None, "name: x\nmodels: [minilm]\nadapters: []\n", r"adapters: the grid is empty"),
    (None, "name: x\nmodels: [minlm]\nadapters: [{method: lora}]\n", r"models: Unknown model 'minlm'\. Did you mean 'minilm'"),
    (None, "name: x\nmodels: [minilm]\ntasks: [bolq]\nadapters: [{method: lora}]\n", r"tasks: unknown task 'bolq'\. Did you mean 'boolq'"),
    (None, "name: x\nmodels: minilm\nadapters: [{method: lora}]\n", r"models: expected list, got str"),
    (None, "name: x\nmodel: [minilm]\nadapters: [{method: lora}]\n", r"model: unknown key\. Did you mean 'models'"),
    (None, "name: x\nmodels: [minilm]\nadapters: [{method: lora}]\nprofiles: {cpu: {step: 3}}\n", r"profiles\.cpu\.step: unknown key\. Did you mean 'steps'"),
    (None, "name: x\nmodels: [minilm]\nadapters: [{method: lora}]\nprofiles: {cpu: {steps: many}}\n", r"profiles\.cpu\.steps: expected int, got str"),
    (None, "name: x\nmodels: [minilm]\nadapters: [{method: lora, match: more, axes: {r: [2]}}]\n", r"nothing to match"),
    ("  - method: more\n  - method: fourierft\n    match: more\n    axes: {n_frequencies: [768]}\n", None,
     r"adapters\[1\]\.axes: Adapter 'fourierft' has no parameter 'n_frequencies'\. Did you mean 'n_frequency'\?"),
    ("  - method: more\n  - method: ia3\n    match: more\n", None,
     r"adapters\[1\]\.match: matching chooses a value of ia3's size knob: give its axes .* or drop match"),
    ("  - method: more\n  - method: lora\n    match: more\n    axes: {lora_dropout: [0.0, 0.1]}\n", None,
     r"adapters\[1\]\.axes: its axes \(lora_dropout\) do not change lora's trainable parameters on minilm "
     r"\(110,592 at every point\): not a size knob"),
    (None, "name: [x\n", r"file: not valid YAML"),
    (None, "name: x\nmodels: [llama-7b]\nadapters: [{method: lora}]\n", r"models: Unknown model 'llama-7b'.*'llama-7b@paper'"),
    (None, "name: x\nmodels: [minilm]\nmeasure: [param]\nadapters: [{method: lora}]\n",
     r"measure: unknown measurement 'param'\. Did you mean 'params'"),
    (None, "name: x\nmodels: [minilm]\nadapters: [{method: lora}]\nprofiles: {cpu: {dtype: fp64}}\n",
     r"profiles\.cpu\.dtype: unknown value 'fp64'\. .*Choose from fp32, bf16, fp16"),
    (None, "name: x\nmodels: [minilm]\nadapters: [{method: lora}]\nprofiles: {cpu: {shapes: [{batch: 0}]}}\n",
     r"shapes\[0\]\.batch: must be 1 or more"),
    (None, "name: x\nmodels: [minilm]\nadapters: [{method: none, axes: {r: [2]}}]\n", r"adapters\[0\]\.axes: The control"),
])
def test_bad_study_files_are_rejected_naming_file_key_and_reason(tmp_path, adapters, text, match):
    path = study_file(tmp_path, adapters or "", text=text)
    with pytest.raises(StudyError, match=match) as err:
        load_study(path)
    assert str(err.value).startswith(path)


def test_unknown_study_name_suggests_a_known_one():
    with pytest.raises(StudyError, match="Did you mean 'efficiency'"):
        load_study("eficiency")


def test_every_training_study_gets_both_references_per_seed(tmp_path):
    text = BASE.format(adapters="  - method: lora\n    axes: {r: [4]}").replace("models: [minilm]",
                                                                               "models: [minilm]\ntasks: [piqa]")
    gpu = load_study(study_file(tmp_path, text=text), profile="gpu").trials
    assert sorted((t.arm, t.seed) for t in gpu) == sorted(
        (arm, seed) for arm in ("lora(lora_alpha=8,r=4)", "head only", "calibrated") for seed in (0, 1, 2))
    calibrated = [t for t in gpu if t.calibrate]
    assert all(t.adapter is None and t.kind == "train" for t in calibrated)
    with pytest.raises(StudyError, match="head-only control .* remove this entry"):
        load_study(study_file(tmp_path, text=text.replace("  - method: lora", "  - method: none\n  - method: lora")))
    measure_only = expand(tmp_path, "  - method: lora\n    axes: {r: [4]}")
    assert [t.arm for t in measure_only] == ["lora(lora_alpha=8,r=4)"]  # a study with no task has no references


TUNED = """
name: tuned
models: [minilm]
tasks: [commonsenseqa]
adapters:
  - method: more
    axes: {nblocks: [4], blk_r: [1, 4]}
    lr: [1.0e-3, 3.0e-3, 1.0e-2]
  - method: lora
    axes: {r: [4]}
    lr: [1.0e-3]
profiles:
  cpu: {steps: 10, batch: 2, seq_len: 16, seeds: [3, 1, 2]}
  quick: {steps: 10, batch: 2, seq_len: 16, seeds: [0], learning_rates: reference}
"""


def test_search_runs_every_rate_at_the_first_seed_and_at_rates_keeps_the_chosen_rate(tmp_path):
    study = load_study(study_file(tmp_path, text=TUNED))
    assert len(study.trials) == 2 * 3 * 3 + 3 + 2 * 3  # MoRe x rates x seeds, LoRA's one rate, two references
    assert study.tuning_seed == 1 and study.learning_rates == "validation"
    search = study.search()
    more = [t for t in search if t.adapter and t.adapter.method == "more"]
    assert {t.seed for t in more} == {1} and len(more) == 6  # two arms, three rates, the tuning seed only
    assert len(search) == 6 + 3 + 6  # an arm with one rate (LoRA, the references) runs every seed at once
    chosen = {("minilm", "commonsenseqa", "more(blk_r=1,nblocks=4)"): 3e-3}
    later = study.at_rates(chosen)
    blk_r1 = [t for t in later if t.arm == "more(blk_r=1,nblocks=4)"]
    assert sorted(t.seed for t in blk_r1) == [1, 2, 3] and {t.lr for t in blk_r1} == {3e-3}
    assert not any(t.arm == "more(blk_r=4,nblocks=4)" for t in later)  # no rate chosen: its seeds wait
    assert {t.id for t in search if not study.tuned(t)} <= {t.id for t in later}


def test_a_training_study_that_asks_for_flops_counts_them_once_per_configuration_at_the_step_shape(tmp_path):
    plain = load_study(study_file(tmp_path, text=TUNED))
    counted = load_study(study_file(tmp_path, text=TUNED.replace("tasks:", "measure: [params, flops, time]\ntasks:")))
    training = [t for t in counted.trials if t.kind == "train"]
    assert all("flops" not in t.measure for t in training)  # a training trial counts none
    counting = [t for t in counted.trials if t.kind == "measure"]
    assert sorted(t.arm for t in counting) == ["lora(lora_alpha=8,r=4)", "more(blk_r=1,nblocks=4)",
                                               "more(blk_r=4,nblocks=4)"]  # each configuration once, no reference
    assert {(t.measure, t.batch, t.seq_len, t.seed, t.task) for t in counting} == {(("flops",), 2 * 5, 16, 1, None)}
    assert all(t in counted.search() and t in counted.at_rates({}) for t in counting)  # run in the first stage
    without_flops = load_study(study_file(tmp_path, text=TUNED.replace("tasks:", "measure: [params, time]\ntasks:")))
    assert {t.id for t in training} == {t.id for t in without_flops.trials if t.kind == "train"}  # nothing reruns
    assert not any(t.kind == "measure" for t in plain.trials)


def test_a_training_study_that_asks_for_time_times_its_configurations_in_turn_in_one_trial(tmp_path):
    timed = load_study(study_file(tmp_path, text=TUNED.replace("tasks:", "measure: [params, time]\ntasks:")))
    (in_turn,) = [t for t in timed.trials if t.kind == "interleaved"]
    assert [a.label for a in in_turn.adapters] == ["more(blk_r=1,nblocks=4)", "more(blk_r=4,nblocks=4)",
                                                   "lora(lora_alpha=8,r=4)"]  # each configuration once, in order
    assert (in_turn.batch, in_turn.seq_len, in_turn.seed, in_turn.task) == (2 * 5, 16, 1, None)  # the step's shape
    assert in_turn in timed.search() and not any(t.kind == "measure" for t in timed.trials)  # no FLOPs asked
    kept = load_study(study_file(tmp_path, text=TUNED.replace("tasks:", "measure: [time]\ntasks:").replace(
        "learning_rates: reference", "learning_rates: reference, arms: ['lora(lora_alpha=8,r=4)']")), profile="quick")
    assert [[a.label for a in t.adapters] for t in kept.trials if t.kind == "interleaved"] == [["lora(lora_alpha=8,r=4)"]]
    untimed = load_study(study_file(tmp_path, text=TUNED.replace("tasks:", "measure: [params]\ntasks:")))
    assert not any(t.kind == "interleaved" for t in untimed.trials)


def test_learning_rates_takes_validation_or_reference_only(tmp_path):
    study = load_study(study_file(tmp_path, text=TUNED), profile="quick")
    assert study.learning_rates == "reference" and {t.seed for t in study.trials} == {0}
    with pytest.raises(StudyError, match=r"profiles.quick.learning_rates: unknown value 'test'; write validation"):
        load_study(study_file(tmp_path, text=TUNED.replace("learning_rates: reference", "learning_rates: test")),
                   profile="quick")


def test_a_profile_can_keep_only_some_arms_beside_the_references(tmp_path):
    text = TUNED.replace("learning_rates: reference}", 'learning_rates: reference, arms: ["more(blk_r=1,nblocks=4)"]}')
    every_arm = load_study(study_file(tmp_path, text=TUNED), "quick")
    quick = load_study(study_file(tmp_path, text=text), "quick")
    assert sorted({t.arm for t in every_arm.trials}) == ["calibrated", "head only", "lora(lora_alpha=8,r=4)",
                                                         "more(blk_r=1,nblocks=4)", "more(blk_r=4,nblocks=4)"]
    assert sorted(t.arm for t in quick.trials) == ["calibrated", "head only"] + ["more(blk_r=1,nblocks=4)"] * 3
    typo = text.replace("blk_r=1,nblocks=4", "blk_r=1,nblock=4")
    with pytest.raises(StudyError, match=r"profiles.quick.arms: no arm 'more\(blk_r=1,nblock=4\)' in this study. Did "
                                         r"you mean 'more\(blk_r=1,nblocks=4\)'\? Its arms, as the results name them: "
                                         r"lora\(lora_alpha=8,r=4\), more\(blk_r=1"):
        load_study(study_file(tmp_path, text=typo), "quick")


def test_every_shipped_study_loads_under_each_of_its_profiles():
    """Each file in studies/ expands under every profile it names; a gpu profile of a training study chooses its
    step on validation (it trains for many epochs) and caps its epochs."""
    import yaml

    from harness.spec import STUDIES_DIR

    paths = sorted(STUDIES_DIR.glob("*.yaml"))
    assert {p.stem for p in paths} >= {"rank_ablation", "block_ablation", "methods", "efficiency", "bbq"}
    for path in paths:
        for profile in yaml.safe_load(path.read_text())["profiles"]:
            trials = load_study(path.stem, profile=profile).trials
            assert trials, (path.stem, profile)
            training = [t for t in trials if t.kind == "train" and not t.calibrate]
            if profile == "gpu" and training:
                assert all(t.eval_every and t.max_epochs for t in training), path.stem
