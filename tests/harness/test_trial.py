"""The trial contract: one default per key, validation that names the key and the fix, a JSON round
trip, and an id that changes with any value and with the protocol."""
import dataclasses
import json

import pytest

from harness import trial as trial_module
from harness.adapters import AdapterSpec
from harness.trial import TrialConfig, TrialConfigError, TrialResult

MORE = AdapterSpec.make("more", {"nblocks": 4, "blk_r": 2})


def test_every_key_has_one_default_and_a_kind_is_explicit():
    config = TrialConfig(kind="measure", model="minilm")
    assert (config.seq_len, config.batch, config.repeats, config.lr, config.timeout_s, config.device) == (
        128, 8, 10, 1e-3, 3600, "cpu")
    assert config.adapter is None and config.measure == ("params", "flops", "memory", "time")
    with pytest.raises(TypeError):
        TrialConfig(model="minilm")  # no kind, no trial


def test_json_round_trip_keeps_the_config_and_its_id():
    config = TrialConfig(kind="train", model="minilm", task="boolq", adapter=MORE, target_modules=["query"],
                         measure=["params"], label="square", steps=3)
    text = json.dumps(config.to_json())
    again = TrialConfig.from_json(json.loads(text))
    assert again == config and again.id == config.id
    assert config.target_modules == ("query",)  # lists become tuples: the config is immutable
    data = config.to_json()
    assert (data["adapter"], data["adapter_params"]) == ("more", {"blk_r": 2, "nblocks": 4})
    control = TrialConfig.from_json({**data, "adapter": "none", "adapter_params": {}})
    assert control.adapter is None and control.to_json()["adapter"] == "none"


def test_interleaved_trials_carry_their_adapters_as_text():
    lora = AdapterSpec.parse("lora:r=8")
    config = TrialConfig(kind="interleaved", model="minilm", adapters=[lora, MORE])
    assert config.to_json()["adapters"] == ["lora:lora_alpha=16,r=8", "more:blk_r=2,nblocks=4"]
    assert TrialConfig.from_json(config.to_json()) == config
    with pytest.raises(TrialConfigError, match="adapters: an interleaved trial times one or more adapters"):
        TrialConfig(kind="interleaved", model="minilm")


def test_the_id_hashes_every_value_and_the_protocol(monkeypatch):
    config = TrialConfig(kind="measure", model="minilm", adapter=MORE)
    assert len(config.id) == 16 and config.id == TrialConfig(kind="measure", model="minilm", adapter=MORE).id
    for key, value in [("seed", 1), ("seq_len", 64), ("timing_warmup", 3), ("adapter", None), ("label", "x")]:
        assert dataclasses.replace(config, **{key: value}).id != config.id, key
    before = config.id
    monkeypatch.setattr(trial_module, "TRIAL_PROTOCOL", trial_module.TRIAL_PROTOCOL + 1)
    assert config.id != before


def test_the_step_choice_protocol_reaches_only_trials_that_choose_a_step(monkeypatch):
    """Bumping STEP_CHOICE_PROTOCOL reruns the training trials with eval_every, and no other trial."""
    train = TrialConfig(kind="train", model="minilm", task="boolq", adapter=MORE)
    chooses, plain = dataclasses.replace(train, eval_every=10), train
    calibrated = dataclasses.replace(train, adapter=None, calibrate=True, eval_every=10)
    before = {name: c.id for name, c in [("chooses", chooses), ("plain", plain), ("calibrated", calibrated)]}
    monkeypatch.setattr(trial_module, "STEP_CHOICE_PROTOCOL", trial_module.STEP_CHOICE_PROTOCOL + 1)
    after = {name: c.id for name, c in [("chooses", chooses), ("plain", plain), ("calibrated", calibrated)]}
    assert after["chooses"] != before["chooses"]
    assert after["plain"] == before["plain"] and after["calibrated"] == before["calibrated"]


@pytest.mark.parametrize("changes,match", [
    ({"steps": "many"}, r"^steps: expected int, got str \('many'\)"),
    ({"steps": True}, r"^steps: expected int, got bool"),
    ({"steps": 0}, r"^steps: must be 1 or more, got 0"),
    ({"lr": None}, r"^lr: needs a value; its default is 0\.001"),
    ({"dtype": "bf15"}, r"^dtype: unknown value 'bf15'\. Did you mean 'bf16'\? Choose from fp32, bf16, fp16"),
    ({"pooling": "means"}, r"^pooling: unknown value 'means'\. Did you mean 'mean'"),
    ({"measure": ["param"]}, r"^measure: unknown measurement 'param'\. Did you mean 'params'"),
    ({"measure": "params"}, r"^measure: expected a list, got str"),
    ({"target_modules": [1, 2]}, r"^target_modules: expected a list of str"),
    ({"device": "gpu"}, r"^device: unknown device 'gpu'; write cpu, cuda or cuda:N"),
    ({"kind": "training"}, r"^kind: unknown value 'training'\. Did you mean 'train'"),
    ({"task": "boolq"}, r"^task: a train trial needs a task, and only a train trial has one"),
    ({"task": "bolq", "kind": "train"}, r"^task: unknown task 'bolq'\. Did you mean 'boolq'"),
    ({"model": "llama-7b"}, r"^model: Unknown model 'llama-7b'\. Did you mean 'llama-7b@paper'"),
    ({"head": "causal_lm", "kind": "train", "task": "boolq"}, r"^head: a train trial's head follows its task"),
    ({"measure": []}, r"^measure: a measure trial needs one or more of params, flops, memory, time"),
])
def test_bad_values_name_the_key_and_the_fix(changes, match):
    with pytest.raises(TrialConfigError, match=match):
        TrialConfig(**{"kind": "measure", "model": "minilm", **changes})


def test_unknown_keys_in_json_are_refused_with_a_suggestion():
    data = TrialConfig(kind="measure", model="minilm").to_json()
    with pytest.raises(TrialConfigError, match=r"^step: unknown key\. Did you mean 'steps'"):
        TrialConfig.from_json({**data, "step": 3})
    with pytest.raises(TrialConfigError, match=r"^adapter: The control 'none' takes no parameters"):
        TrialConfig.from_json({**data, "adapter": "none", "adapter_params": {"r": 2}})


def test_integers_are_accepted_for_floats_and_kept_as_floats():
    config = TrialConfig(kind="measure", model="minilm", lr=1, memory_limit_gb=4)
    assert isinstance(config.lr, float) and isinstance(config.memory_limit_gb, float)
    assert config.id == TrialConfig(kind="measure", model="minilm", lr=1.0, memory_limit_gb=4.0).id


def test_a_result_round_trips_and_a_failure_says_why():
    result = TrialResult("ok", [{"metric": "trainable_params", "value": 3.0}], env={"torch": "x"}, device="cpu",
                         info={"load_seconds": 0.5})
    assert TrialResult.from_json(json.loads(json.dumps(result.to_json()))) == result
    stored = {"trial_id": "abc", "study": "s", "config": {}, "finished_at": "now", **result.to_json()}
    assert TrialResult.from_json(stored) == result  # a stored record reads back as its result
    failed = TrialResult.failure("Timeout", "ran past its limit")
    assert (failed.status, failed.rows, failed.error_type) == ("failed", [], "Timeout")
