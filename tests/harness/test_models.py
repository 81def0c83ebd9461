"""The model registry on the real embedded models, offline (conftest sets HF_HUB_OFFLINE=1).

SmolLM2's GGUF is converted once for the whole session, into a temporary cache (MORE_HARNESS_CACHE).
"""
import os
import time

import peft
import psutil
import pytest
import torch

import more
import harness.embedded as embedded
import harness.models as models
from harness.embedded import minilm_path, save_pretrained_atomically, smollm2_cache_path
from harness.heads import MeanPooledHead
from harness.models import MODELS, ModelNotAvailableError, build_paper_scale, load_model, origin_of


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory):
    """A cache folder holding the converted SmolLM2, and how long the conversion took."""
    cache = tmp_path_factory.mktemp("more-harness-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MORE_HARNESS_CACHE", str(cache))
        start = time.perf_counter()
        load_model("smollm2")
        seconds = time.perf_counter() - start
    print(f"\nsmollm2 first load (GGUF conversion): {seconds:.1f} s")
    return cache


@pytest.fixture
def smollm2(smollm2_cache, monkeypatch):
    monkeypatch.setenv("MORE_HARNESS_CACHE", str(smollm2_cache))
    return load_model("smollm2")


def encode_pair(tokenizer, texts, pairs=None):
    return tokenizer(texts, pairs, padding=True, return_tensors="pt")


# --------------------------------------------------------------------------------------------------
# Embedded models: load offline, run, take LoRA and MoRe


ADAPTERS = {
    "lora": lambda: peft.LoraConfig(r=4, init_lora_weights=True),
    "more": lambda: more.MoReConfig(nblocks=4, blk_r=4),
}


def assert_adapter_starts_at_the_base_model(model, inputs, adapter):
    """Wrap `model` with the adapter: same outputs at first, gradients reach the adapter. Returns the base logits."""
    model.eval()
    with torch.no_grad():
        base = _logits(model(**inputs))
    adapted = peft.get_peft_model(model, ADAPTERS[adapter]())
    trainable = [name for name, p in adapted.named_parameters() if p.requires_grad]
    assert trainable and all(("lora_" in name or "more_" in name or "classifier" in name or "score" in name)
                             for name in trainable), trainable
    with torch.no_grad():
        torch.testing.assert_close(_logits(adapted(**inputs)), base)  # both adapters start with a zero update
    adapted.train()
    _logits(adapted(**inputs)).float().pow(2).mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in adapted.named_parameters()
               if p.requires_grad and ("lora_" in n or "more_" in n))
    return base


def _logits(output):
    return output.logits if hasattr(output, "logits") else output.last_hidden_state


@pytest.mark.parametrize("head, pooling, adapter", [
    ("base", None, "lora"), ("base", None, "more"),
    ("sequence_classification", "mean", "more"), ("sequence_classification", "builtin", "lora"),
])
def test_minilm_forward_with_adapters(head, pooling, adapter):
    model, tokenizer, info = load_model("minilm", head=head, num_labels=2, pooling=pooling)
    assert info.weights == "pretrained" and info.model_type == "bert" and info.head == head
    inputs = encode_pair(tokenizer, ["is the sky blue?", "a much longer question about the sea"],
                         ["the sky is blue.", "the sea"])
    logits = _logits(model.eval()(**inputs))
    assert logits.shape[:1] == (2,) and torch.isfinite(logits).all()
    assert_adapter_starts_at_the_base_model(model, inputs, adapter)


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_smollm2_forward_with_adapters(smollm2, adapter):
    model, tokenizer, info = smollm2
    assert (info.weights, info.model_type, info.head, info.num_parameters) == (
        "pretrained", "llama", "causal_lm", 134_515_008)
    inputs = tokenizer(["The capital of France is"], return_tensors="pt")
    logits = assert_adapter_starts_at_the_base_model(model, inputs, adapter)
    assert logits.shape == (1, inputs.input_ids.shape[1], 49152)
    assert tokenizer.decode(logits[0, -1].argmax()).strip() == "Paris"  # pretrained, not random


def test_minilm_defaults_to_mean_pooling_and_other_models_to_the_builtin_head():
    assert load_model("minilm", head="sequence_classification", num_labels=3).info.pooling == "mean"
    as_folder = load_model(str(minilm_path()), head="sequence_classification", num_labels=3)
    assert as_folder.info.pooling == "builtin" and as_folder.info.weights == "pretrained"
    assert type(as_folder.model).__name__ == "BertForSequenceClassification"
    assert load_model("minilm").info.num_parameters == 22_713_216


def test_mean_pooling_ignores_padding():
    model, tokenizer, _ = load_model("minilm", head="sequence_classification", num_labels=2)
    model.eval()
    alone = tokenizer(["short one"], return_tensors="pt")
    padded = tokenizer(["short one", "a far longer sentence that forces padding on the first"], padding=True,
                       return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(model(**alone).logits[0], model(**padded).logits[0], atol=1e-5, rtol=1e-5)


def test_mean_pooled_multiple_choice_scores_each_option():
    model, tokenizer, info = load_model("minilm", head="multiple_choice")
    assert isinstance(model, MeanPooledHead) and info.pooling == "mean"
    questions, options = ["where do fish live?"] * 3, ["in water", "in trees", "on the moon"]
    encoded = tokenizer(questions * 2, options * 2, padding=True, return_tensors="pt")
    inputs = {k: v.view(2, 3, -1) for k, v in encoded.items()}  # (batch, options, seq)
    output = model(**inputs, labels=torch.tensor([0, 0]))
    assert output.logits.shape == (2, 3) and output.loss.ndim == 0
    more_model = peft.get_peft_model(model, more.MoReConfig(nblocks=4, blk_r=4, modules_to_save=["classifier"]))
    assert more_model(**inputs).logits.shape == (2, 3)


def test_builtin_multiple_choice_head_for_bert_and_a_clear_error_for_llama(smollm2_cache, monkeypatch):
    model, _, info = load_model("minilm", head="multiple_choice", pooling="builtin")
    assert type(model).__name__ == "BertForMultipleChoice" and info.pooling == "builtin"
    monkeypatch.setenv("MORE_HARNESS_CACHE", str(smollm2_cache))
    with pytest.raises(ValueError, match="pooling='mean'"):
        load_model("smollm2", head="multiple_choice")


def test_sequence_classification_needs_num_labels():
    with pytest.raises(ValueError, match="num_labels"):
        load_model("minilm", head="sequence_classification")


# --------------------------------------------------------------------------------------------------
# The SmolLM2 cache


def test_smollm2_cache_is_reused(smollm2_cache, monkeypatch):
    monkeypatch.setenv("MORE_HARNESS_CACHE", str(smollm2_cache))
    weights = smollm2_cache_path() / "model.safetensors"
    modified = weights.stat().st_mtime_ns

    def convert_again(target):
        raise AssertionError("converted again despite the cache")

    monkeypatch.setattr(embedded, "convert_smollm2", convert_again)
    start = time.perf_counter()
    load_model("smollm2")
    assert time.perf_counter() - start < 15
    assert weights.stat().st_mtime_ns == modified
    assert sorted(p.name for p in smollm2_cache.iterdir()) == [smollm2_cache_path().name]  # no temporary left


def test_smollm2_tokenizer_survives_the_round_trip(smollm2):
    import transformers

    model, tokenizer, _ = smollm2
    gguf = embedded.smollm2_gguf_path()
    original = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    text = "Monarch matrices: 2 + 3 = 5, café, 東京"
    assert tokenizer(text).input_ids == original(text).input_ids
    assert tokenizer.chat_template == original.chat_template
    assert tokenizer.eos_token == "<|im_end|>" and model.generation_config.eos_token_id == tokenizer.eos_token_id
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2+3?"}], add_generation_prompt=True,
                                         return_tensors="pt", return_dict=True)
    output = model.generate(**chat, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(output[0, chat["input_ids"].shape[1]:])
    assert "5" in answer and answer.endswith("<|im_end|>")  # stops at end of turn


def test_interrupted_save_leaves_no_cache(smollm2, tmp_path, monkeypatch):
    model, tokenizer, _ = smollm2
    target = tmp_path / "smollm2-cache"

    def fail_midway(*args, **kwargs):
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C after the weights were written

    monkeypatch.setattr(tokenizer, "save_pretrained", fail_midway)
    with pytest.raises(KeyboardInterrupt):
        save_pretrained_atomically(target, model, tokenizer)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []  # the temporary folder is gone too


def test_atomic_save_keeps_a_cache_another_process_finished_first(tmp_path):
    model, tokenizer, _ = load_model("minilm")
    target = tmp_path / "minilm-copy"
    save_pretrained_atomically(target, model, tokenizer)
    first = (target / "model.safetensors").stat().st_mtime_ns
    save_pretrained_atomically(target, model, tokenizer)  # a second writer loses the race quietly
    assert (target / "model.safetensors").stat().st_mtime_ns == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["minilm-copy"]
    assert load_model(str(target)).info.num_parameters == 22_713_216


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("MORE_HARNESS_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert embedded.harness_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("MORE_HARNESS_CACHE")
    assert embedded.harness_cache_dir() == tmp_path / "xdg" / "more-harness"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert embedded.harness_cache_dir() == tmp_path / "home" / ".cache" / "more-harness"


# --------------------------------------------------------------------------------------------------
# Names


def test_unknown_name_lists_the_registered_ones():
    with pytest.raises(ValueError, match="Registered names: minilm, smollm2, roberta-large@paper"):
        load_model("minlm")
    with pytest.raises(ValueError, match="llama-7b@paper"):
        load_model("llama-70b@paper")


def test_bare_roberta_large_asks_which_one_is_meant():
    with pytest.raises(ValueError) as error:
        load_model("roberta-large")
    assert "FacebookAI/roberta-large" in str(error.value) and "roberta-large@paper" in str(error.value)


@pytest.mark.parametrize("name", ["llama-7b", "roberta-large", "foo", "minlm", "llama-70b@paper"])
def test_bare_names_are_refused_before_anything_is_loaded(name, monkeypatch):
    import transformers

    def no_hub(*args, **kwargs):
        raise AssertionError("the hub was asked")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", no_hub)
    with pytest.raises(ValueError, match="Registered names: minilm, smollm2, roberta-large@paper"):
        origin_of(name)
    with pytest.raises(ValueError, match="Registered names"):
        models.is_decoder(name)


def test_names_resolve_to_their_origin(tmp_path):
    assert [origin_of(n) for n in ("minilm", "llama-7b@paper", str(tmp_path), "FacebookAI/roberta-large")] == [
        "embedded", "paper_scale", "folder", "hub"]


def test_hub_id_that_is_not_downloaded_says_download_first():
    with pytest.raises(ModelNotAvailableError, match=r"Download it first, e.g. `hf download FacebookAI/roberta-large`"
                                                     r".* or give the model as a local folder path"):
        load_model("FacebookAI/roberta-large")


# --------------------------------------------------------------------------------------------------
# Paper-scale architectures


@pytest.mark.parametrize("name, head, parameters", [
    ("roberta-large@paper", "base", 355_359_744),
    ("llama-7b@paper", "causal_lm", 6_738_415_616),
    ("llama-13b@paper", "causal_lm", 13_015_864_320),
])
def test_paper_scale_builds_on_meta_without_weights(name, head, parameters):
    rss_before = psutil.Process().memory_info().rss
    model, tokenizer, info = load_model(name)
    assert psutil.Process().memory_info().rss - rss_before < 500e6  # far below the model's own size
    assert all(p.is_meta for p in model.parameters())
    assert tokenizer is None
    assert (info.weights, info.device, info.head, info.num_parameters, info.source) == (
        "random", "meta", head, parameters, "config")
    assert info.num_parameters == sum(p.numel() for p in build_paper_scale(name.removesuffix("@paper")).parameters())


def test_paper_scale_heads():
    base = load_model("roberta-large@paper").info.num_parameters
    classifier = load_model("roberta-large@paper", head="sequence_classification", num_labels=2).info.num_parameters
    hidden = 1024  # roberta's classification head replaces the pooler (dense h x h) with dense h x h + out_proj
    assert classifier - base == hidden * 2 + 2
    llama_base = load_model("llama-7b@paper", head="base").info.num_parameters
    assert load_model("llama-7b@paper").info.num_parameters - llama_base == 32000 * 4096  # lm_head


def test_paper_scale_on_a_real_device_has_random_weights():
    model, _, info = load_model("roberta-large@paper", device="cpu")
    assert info.weights == "random" and info.device == "cpu"
    weight = model.encoder.layer[0].attention.self.query.weight
    assert not weight.is_meta and 0.01 < weight.std().item() < 0.03  # initializer_range 0.02


def test_registry_names_every_entry_with_its_origin():
    assert {name: entry.origin for name, entry in MODELS.items()} == {
        "minilm": "embedded", "smollm2": "embedded", "roberta-large@paper": "paper_scale",
        "llama-7b@paper": "paper_scale", "llama-13b@paper": "paper_scale"}
    assert os.path.isfile(embedded.smollm2_gguf_path())
