"""What a study plans with, counted on the meta device: equal to what a trial counts on the real model, for
methods whose counts no closed form here covers, and to the closed forms that MoRe and LoRA keep."""
import pytest

from harness.adapters import AdapterSpec
from harness.layers import AdapterBuildError, adapter_params, layer_sizes
from harness.measure.params import parameter_counts
from harness.measure.records import value_of
from harness.prepare import prepare_model
from harness.tasks import load_task
from harness.trial import TrialConfig

QKV = ["query", "key", "value"]


@pytest.mark.parametrize("adapter", ["vera:r=384", "boft:boft_block_size=8", "lokr:r=16,decompose_factor=4",
                                     "lora:r=3,use_dora=True"])
def test_the_meta_count_is_what_a_trial_counts_on_the_real_model(adapter):
    spec = AdapterSpec.parse(adapter)
    config = TrialConfig(kind="train", model="minilm", task="commonsenseqa", adapter=spec, pooling="mean",
                         target_modules=tuple(QKV))
    model = prepare_model(config, spec, load_task("commonsenseqa")).model  # pretrained weights, the trial's head
    real = value_of(parameter_counts(model), "adapter_params")
    assert adapter_params("minilm", QKV, spec) == real > 0


@pytest.mark.parametrize("adapter", ["more:nblocks=4,blk_r=1", "more:nblocks=4,blk_r=4", "more:blk_sz=16,blk_r=4",
                                     "lora:r=1", "lora:r=16"])
def test_the_closed_forms_equal_the_meta_count(adapter):
    spec = AdapterSpec.parse(adapter)
    assert spec.closed_form_params(layer_sizes("minilm", QKV)) == adapter_params("minilm", QKV, spec)


def test_an_adapter_peft_cannot_build_says_why():
    with pytest.raises(AdapterBuildError, match=r"c3a\(block_size=100\) cannot be built on minilm: ValueError: "
                                                 r"The block size should be a factor of the input size"):
        adapter_params("minilm", QKV, AdapterSpec.parse("c3a:block_size=100"))

