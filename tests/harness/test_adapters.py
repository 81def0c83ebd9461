"""Adapter specs: parsing, aliases, the harness's defaults, errors with a suggestion, the text round
trip, the control, and the closed-form parameter counts."""
import pytest

from harness.adapters import AdapterSpec, known_methods, make_adapter, method_of, parse_adapter
from more import monarch_shape


def test_parse_applies_aliases_and_defaults():
    assert AdapterSpec.parse("lora:r=4,alpha=16,dropout=0.1") == AdapterSpec(
        "lora", {"lora_alpha": 16, "lora_dropout": 0.1, "r": 4})
    assert AdapterSpec.parse("lora").params == {"lora_alpha": 16, "r": 8}  # alpha = 2r at every rank
    assert AdapterSpec.parse("lora:r=2").params == {"lora_alpha": 4, "r": 2}
    assert AdapterSpec.parse("more").params == {"nblocks": 4}
    assert AdapterSpec.parse("more:blk_sz=16,blk_r=2").params == {"blk_r": 2, "blk_sz": 16}  # no nblocks beside blk_sz
    assert AdapterSpec.parse(" MORE : nblocks=2 , blk_r=1 ").params == {"blk_r": 1, "nblocks": 2}


def test_values_are_python_literals_or_bare_words():
    spec = AdapterSpec.parse("lora:r=4,target_modules=['query'],init_lora_weights=gaussian")
    assert spec.params["target_modules"] == ["query"] and spec.params["init_lora_weights"] == "gaussian"


@pytest.mark.parametrize("text", ["lora:r=4,alpha=8", "more:nblocks=8,blk_r=2", "lora:init_lora_weights='gaussian'",
                                  "loha:r=4", "ia3"])
def test_text_round_trips(text):
    spec = AdapterSpec.parse(text)
    assert AdapterSpec.parse(spec.text) == spec


def test_the_control_is_none_and_read_in_one_place():
    assert parse_adapter("none") is None and make_adapter("none") is None and make_adapter(None) is None
    assert method_of(None) == "none" and method_of(AdapterSpec.parse("lora")) == "lora"
    with pytest.raises(ValueError, match="is the control, not an adapter"):
        AdapterSpec.parse("none")
    with pytest.raises(ValueError, match="takes no parameters"):
        make_adapter("none", {"r": 2})


@pytest.mark.parametrize("text,match", [
    ("moore:r=4", r"Unknown adapter 'moore'\. Did you mean 'more'\? Known adapters: .*lora"),
    ("lora:rank=4", r"Adapter 'lora' has no parameter 'rank'"),
    ("lora:alhpa=4", r"Did you mean 'alpha'"),
    ("more:nblock=4", r"Did you mean 'nblocks'"),
    ("lora:r", r"'r' is not key=value\. Write e\.g\. 'lora:r=8,alpha=16'"),
])
def test_errors_name_the_problem_and_suggest(text, match):
    with pytest.raises(ValueError, match=match):
        AdapterSpec.parse(text)


def test_known_methods_include_more_and_lora():
    assert {"more", "lora", "loha"} <= set(known_methods())


def test_closed_forms():
    layers = [(384, 384)] * 3 + [(384, 1536)]
    more = AdapterSpec.parse("more:nblocks=4,blk_r=4")
    assert more.closed_form_params(layers) == sum(monarch_shape(i, o, 4, 4).trainable_params for i, o in layers)
    assert more.closed_form_params([(384, 384)]) == 4 * 384 + 4 * 384  # two factors of k x r x (in or out)/k
    lora = AdapterSpec.parse("lora:r=8")
    assert lora.closed_form_params(layers) == sum(8 * (i + o) for i, o in layers)
    assert lora.closed_form_forward_flops(layers, tokens=10) == 2 * 10 * lora.closed_form_params(layers)
    assert AdapterSpec.parse("loha:r=4").closed_form_params(layers) is None  # no closed form: said, not guessed


def test_labels_and_peft_configs():
    spec = AdapterSpec.parse("lora:r=4")
    assert spec.label == "lora(lora_alpha=8,r=4)"
    config = spec.peft_config(target_modules=("query", "value"), modules_to_save=["classifier"], task_type="CAUSAL_LM")
    assert (config.r, config.lora_alpha, sorted(config.target_modules), config.modules_to_save) == (
        4, 8, ["query", "value"], ["classifier"])
