"""MoRe through PEFT's public API, on the real all-MiniLM-L6-v2 and on paper-scale meta-device configs."""
import re
import warnings

import peft
import pytest
import torch
from peft import mapping
from transformers import AutoModel, GPT2Config, GPT2Model

import more
from more import MoReConfig, MoReLinear, MoReModel, monarch_shape
from harness.models import build_paper_scale


@pytest.fixture
def minilm(minilm_dir):
    return AutoModel.from_pretrained(minilm_dir).eval()


@pytest.fixture
def tokens():
    return torch.randint(1000, 20000, (2, 12))


def hidden(model, tokens):
    with torch.no_grad():
        return model(input_ids=tokens).last_hidden_state


def adapted_layers(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, MoReLinear)]


def test_registered_in_peft_enum_and_tables():
    """Catches a PEFT upgrade that changes the enum or the tables MoRe registers in."""
    member = peft.PeftType.MORE
    assert member is peft.PeftType("MORE") is peft.PeftType["MORE"] and member in list(peft.PeftType)
    assert mapping.PEFT_TYPE_TO_CONFIG_MAPPING[member] is MoReConfig
    assert mapping.PEFT_TYPE_TO_TUNER_MAPPING[member] is MoReModel
    assert mapping.PEFT_TYPE_TO_PREFIX_MAPPING[member] == "more_"
    more.register()  # idempotent
    config = MoReConfig(nblocks=4)
    assert config.peft_type is member and config.peft_type.value.lower() + "_" == MoReModel.prefix


@pytest.mark.parametrize("bias", ["none", "more_only", "all"])
def test_bias_options_train_and_save_the_right_biases(minilm_dir, bias, tmp_path):
    model = peft.get_peft_model(AutoModel.from_pretrained(minilm_dir),
                                MoReConfig(nblocks=4, target_modules=["query", "value"], bias=bias))
    all_biases = [n for n, _ in model.named_parameters() if n.endswith(".bias")]
    trained = [n for n, p in model.named_parameters() if p.requires_grad and n.endswith(".bias")]
    expected = {"none": [], "more_only": [n for n in all_biases if ".base_layer." in n], "all": all_biases}[bias]
    assert trained == expected and len(expected) == {"none": 0, "more_only": 12, "all": len(all_biases)}[bias]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with model.disable_adapter():  # trained biases stay on: PEFT warns, for MoRe as for LoRA
            pass
    assert any("disabling adapter layers with bias" in str(w.message) for w in caught) == (bias != "none")
    model.save_pretrained(tmp_path)
    loaded = peft.PeftModel.from_pretrained(AutoModel.from_pretrained(minilm_dir), tmp_path)
    assert len([k for k in peft.get_peft_model_state_dict(loaded) if k.endswith(".bias")]) == len(expected)


def test_default_targets_and_trainable_count_on_minilm(minilm, capsys):
    model = peft.get_peft_model(minilm, MoReConfig(nblocks=4, blk_r=4))
    layers = adapted_layers(model)
    assert sorted({n.rsplit(".", 1)[-1] for n, _ in layers}) == ["key", "query", "value"]
    assert len(layers) == 6 * 3
    expected = 18 * monarch_shape(384, 384, blk_r=4, nblocks=4).trainable_params
    trainable, total = model.get_nb_trainable_parameters()
    assert trainable == expected == 55296
    model.print_trainable_parameters()
    assert f"trainable params: {expected:,}" in capsys.readouterr().out
    w1 = layers[0][1].more_blkdiag1["default"]
    w2 = layers[0][1].more_blkdiag2["default"]
    assert w1.shape == (4, 4, 96) and w2.shape == (4, 96, 4)  # official blkdiag1 / blkdiag2 layout
    assert torch.count_nonzero(w2) == 0 and torch.count_nonzero(w1) > 0  # paper init: delta starts at 0
    assert w1.abs().max() <= 1 / 96**0.5


def test_starts_as_the_base_model(minilm_dir, tokens):
    base = hidden(AutoModel.from_pretrained(minilm_dir).eval(), tokens)
    model = peft.get_peft_model(AutoModel.from_pretrained(minilm_dir).eval(), MoReConfig(nblocks=4))
    assert torch.equal(hidden(model, tokens), base)


def test_save_and_load_reproduce_outputs_bit_for_bit(minilm, minilm_dir, tokens, tmp_path):
    model = peft.get_peft_model(minilm, MoReConfig(nblocks=4, blk_r=2, init_weights=False)).eval()
    expected = hidden(model, tokens)
    model.save_pretrained(tmp_path)
    config = peft.PeftConfig.from_pretrained(tmp_path)
    assert isinstance(config, MoReConfig) and (config.nblocks, config.blk_r) == (4, 2)
    loaded = peft.PeftModel.from_pretrained(AutoModel.from_pretrained(minilm_dir), tmp_path).eval()
    assert torch.equal(hidden(loaded, tokens), expected)
    assert loaded.get_nb_trainable_parameters()[0] == 0  # loaded for inference by default

    trainable = peft.PeftModel.from_pretrained(AutoModel.from_pretrained(minilm_dir), tmp_path, is_trainable=True)
    assert trainable.get_nb_trainable_parameters()[0] == model.get_nb_trainable_parameters()[0]
    out = trainable(input_ids=tokens).last_hidden_state.pow(2).mean()
    out.backward()
    assert all(p.grad is not None for n, p in trainable.named_parameters() if p.requires_grad)


def test_merge_unmerge_unload_and_disable(minilm, minilm_dir, tokens):
    base = hidden(AutoModel.from_pretrained(minilm_dir).eval(), tokens)
    model = peft.get_peft_model(minilm, MoReConfig(nblocks=4, blk_r=4, init_weights=False)).eval()
    adapted = hidden(model, tokens)
    assert not torch.allclose(adapted, base, atol=1e-3)
    model.merge_adapter()
    torch.testing.assert_close(hidden(model, tokens), adapted, rtol=1e-4, atol=1e-4)
    model.unmerge_adapter()
    torch.testing.assert_close(hidden(model, tokens), adapted, rtol=1e-4, atol=1e-4)
    with model.disable_adapter():
        torch.testing.assert_close(hidden(model, tokens), base, rtol=1e-4, atol=1e-4)
    merged = model.merge_and_unload()
    assert not adapted_layers(merged)
    torch.testing.assert_close(hidden(merged, tokens), adapted, rtol=1e-4, atol=1e-4)


def test_delta_weight_is_what_merging_adds(minilm):
    model = peft.get_peft_model(minilm, MoReConfig(nblocks=4, blk_r=3, init_weights=False))
    _, layer = adapted_layers(model)[0]
    x = torch.randn(5, 384)
    with torch.no_grad():
        delta = layer(x) - layer.get_base_layer()(x)
        before = layer.get_base_layer().weight.clone()
        layer.merge()
        torch.testing.assert_close(layer.get_base_layer().weight - before, layer.delta_weight())
    torch.testing.assert_close(delta, x @ layer.delta_weight().T, rtol=1e-4, atol=1e-5)


def test_several_adapters_with_set_adapter(minilm, tokens):
    model = peft.get_peft_model(minilm, MoReConfig(nblocks=4, blk_r=4, init_weights=False)).eval()
    first = hidden(model, tokens)
    model.add_adapter("blocks2", MoReConfig(nblocks=2, blk_r=2, init_weights=False))
    assert torch.equal(hidden(model, tokens), first)  # the new adapter is not active yet
    model.set_adapter("blocks2")
    second = hidden(model, tokens)
    assert not torch.allclose(second, first, atol=1e-3)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("blocks2" in n for n in trainable)
    model.set_adapter("default")
    assert torch.equal(hidden(model, tokens), first)


def test_one_block_equals_lora_with_the_same_factors(minilm_dir, tokens):
    more_model = peft.get_peft_model(
        AutoModel.from_pretrained(minilm_dir).eval(), MoReConfig(nblocks=1, blk_r=4, init_weights=False)
    )
    lora_model = peft.get_peft_model(
        AutoModel.from_pretrained(minilm_dir).eval(),
        peft.LoraConfig(r=4, lora_alpha=4, target_modules=["query", "key", "value"]),  # alpha = r: no scaling
    )
    lora_layers = dict(
        (n, m) for n, m in lora_model.named_modules() if isinstance(m, peft.tuners.lora.Linear)
    )
    for name, layer in adapted_layers(more_model):
        lora = lora_layers[name]
        with torch.no_grad():
            lora.lora_A["default"].weight.copy_(layer.more_blkdiag1["default"][0])
            lora.lora_B["default"].weight.copy_(layer.more_blkdiag2["default"][0])
    torch.testing.assert_close(hidden(more_model, tokens), hidden(lora_model, tokens), rtol=1e-5, atol=1e-5)
    assert more_model.get_nb_trainable_parameters() == lora_model.get_nb_trainable_parameters()


def test_reference_kernel_gives_the_same_model(minilm_dir, tokens):
    outputs = []
    for kernel in ("auto", "reference"):
        torch.manual_seed(1)
        model = peft.get_peft_model(
            AutoModel.from_pretrained(minilm_dir).eval(), MoReConfig(nblocks=4, init_weights=False, kernel=kernel)
        )
        outputs.append(hidden(model, tokens))
    torch.testing.assert_close(*outputs, rtol=1e-4, atol=1e-4)


def test_target_selection_options(minilm_dir):
    only_first = peft.get_peft_model(
        AutoModel.from_pretrained(minilm_dir), MoReConfig(nblocks=4, target_modules=["query", "value"],
                                                          layers_to_transform=[0])
    )
    assert [n.split("base_model.model.")[-1] for n, _ in adapted_layers(only_first)] == [
        "encoder.layer.0.attention.self.query", "encoder.layer.0.attention.self.value"]
    excluded = peft.get_peft_model(
        AutoModel.from_pretrained(minilm_dir),
        MoReConfig(nblocks=4, target_modules=["query", "key", "value"], exclude_modules=["key"]),
    )
    assert not any(n.endswith("key") for n, _ in adapted_layers(excluded))
    saved = peft.get_peft_model(
        AutoModel.from_pretrained(minilm_dir), MoReConfig(nblocks=4, modules_to_save=["pooler"])
    )
    pooler = 384 * 384 + 384
    assert saved.get_nb_trainable_parameters()[0] == 18 * 3072 + pooler


def test_gpt2_conv1d_layers(tokens):
    """GPT-2 stores its projections as transformers Conv1D, (in, out): merging must transpose."""
    config = GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=21000, n_positions=32)
    model = peft.get_peft_model(GPT2Model(config).eval(), MoReConfig(nblocks=4, blk_r=2, init_weights=False)).eval()
    layers = adapted_layers(model)
    assert [n.rsplit(".", 1)[-1] for n, _ in layers] == ["c_attn", "c_attn"]
    assert layers[0][1].more_blkdiag2["default"].shape == (4, 48, 2)  # out = 3 * 64
    adapted = hidden(model, tokens)
    merged = model.merge_and_unload()
    torch.testing.assert_close(hidden(merged, tokens), adapted, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name,per_layer,layers", [("roberta-large", 3 * 4 * 4 * (256 + 256), 24),
                                                    ("llama-7b", 3 * 4 * 4 * (1024 + 1024), 32)])
def test_paper_scale_counts_on_meta_device(name, per_layer, layers):
    model = build_paper_scale(name)
    total_before = sum(p.numel() for p in model.parameters())
    peft_model = peft.get_peft_model(model, MoReConfig(nblocks=4, blk_r=4))
    trainable, _ = peft_model.get_nb_trainable_parameters()
    assert trainable == per_layer * layers
    assert all(p.device.type == "meta" for p in peft_model.parameters())
    if name == "llama-7b":
        # the paper: about 3M trainable parameters, 0.047% of LLaMA-7B, with q, k, v at 4 blocks of rank 4
        assert trainable == 3_145_728
        assert round(100 * trainable / total_before, 3) == 0.047


def test_bad_targets_get_clear_errors(minilm_dir):
    with pytest.raises(ValueError, match=r"match no module of BertModel.*query.*Set target_modules"):
        peft.get_peft_model(AutoModel.from_pretrained(minilm_dir), MoReConfig(nblocks=4, target_modules=["qkv"]))
    with pytest.raises(ValueError, match=r"encoder\.layer\.0\.attention: MoRe adapts linear layers only, got BertAttention"):
        peft.get_peft_model(AutoModel.from_pretrained(minilm_dir),
                            MoReConfig(nblocks=4, target_modules=["attention"]))
    with pytest.raises(ValueError, match=re.escape("encoder.layer.0.attention.self.query: nblocks=500 is larger than its 384 input")):
        peft.get_peft_model(AutoModel.from_pretrained(minilm_dir), MoReConfig(nblocks=500))


@pytest.mark.parametrize("kwargs,match", [
    (dict(), "exactly one of nblocks or blk_sz"),
    (dict(nblocks=4, blk_sz=64), "exactly one of nblocks or blk_sz"),
    (dict(nblocks=4, blk_r=0), "blk_r must be an integer >= 1, got blk_r=0"),
    (dict(nblocks=4, init_weights="lora"), "init_weights must be True"),
    (dict(nblocks=4, bias="lora_only"), "bias must be one of"),
    (dict(nblocks=4, kernel="cuda"), "kernel must be one of"),
])
def test_bad_config_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MoReConfig(**kwargs)
