"""MoReConfig: the PEFT configuration of a MoRe adapter."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from peft.config import PeftConfig
from peft.utils import PeftType

from .shapes import resolve_nblocks

# The name of MoRe in PEFT's PeftType enum; `more.registration` adds the member when `more` is imported.
MORE_PEFT_TYPE = "MORE"

# PEFT's bias options: train no bias, every bias of the model, or the biases of MoRe-adapted layers only.
BIAS_CHOICES = ("none", "all", "more_only")
KERNEL_CHOICES = ("auto", "bmm", "triton", "reference")

# The paper adapts the attention's query, key and value projections.
TRANSFORMERS_MODELS_TO_MORE_TARGET_MODULES = {
    "llama": ["q_proj", "k_proj", "v_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj"],
    "mixtral": ["q_proj", "k_proj", "v_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj"],
    "gemma2": ["q_proj", "k_proj", "v_proj"],
    "gemma3_text": ["q_proj", "k_proj", "v_proj"],
    "roberta": ["query", "key", "value"],
    "bert": ["query", "key", "value"],
    "deberta-v2": ["query_proj", "key_proj", "value_proj"],
    "gpt2": ["c_attn"],
}


@dataclass
class MoReConfig(PeftConfig):
    """Configuration of a MoRe (Monarch Rectangular) adapter, Tan et al. 2024 (arXiv 2408.17383).

    Each adapted linear layer W (out x in) gains delta(x) = P2 . BD2 . P1 . BD1 . pad(x): two
    block-diagonal factors with `nblocks` blocks joined by a stride permutation. A layer gets about
    blk_r * (in + out) trainable parameters, like a LoRA of rank blk_r, while its update can reach
    rank nblocks * blk_r. There is no alpha: the update is added unscaled.

    Give exactly one of `nblocks` (the paper uses 4) or `blk_sz` (input block size; then
    nblocks = ceil(in / blk_sz) per layer).
    """

    nblocks: Optional[int] = field(default=None, metadata={"help": "Number of blocks k in each factor."})
    blk_sz: Optional[int] = field(
        default=None, metadata={"help": "Input block size; nblocks = ceil(in_features / blk_sz). Excludes nblocks."}
    )
    blk_r: int = field(default=4, metadata={"help": "Rank of each block: the first factor maps each block to blk_r."})
    target_modules: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={"help": "Module names or a regex to adapt; None picks q, k, v for known architectures."},
    )
    exclude_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Module names or a regex to leave alone."}
    )
    layers_to_transform: Optional[Union[list[int], int]] = field(
        default=None, metadata={"help": "Only adapt these layer indices."}
    )
    layers_pattern: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Name of the layer list, when layers_to_transform is given and not inferred."}
    )
    modules_to_save: Optional[list[str]] = field(
        default=None, metadata={"help": "Extra modules to train and save in full, e.g. a new classifier head."}
    )
    dropout: float = field(default=0.0, metadata={"help": "Dropout on the adapter's input."})
    init_weights: bool = field(
        default=True,
        metadata={
            "help": "True: the paper's init, w1 Kaiming-uniform per block (bound 1/sqrt(block width)) and w2 zero, "
            "so the adapter starts at delta = 0. False: both factors Kaiming-uniform per block, a non-zero start "
            "(for tests and projections)."
        },
    )
    kernel: Literal["auto", "bmm", "triton", "reference"] = field(
        default="auto",
        metadata={"help": "How the Monarch product runs: 'auto' (the fastest for the device: bmm on CPU; on CUDA "
                  "bmm or triton, measured per shape on first use), 'bmm' (batched matrix products), 'triton' "
                  "(the fused Triton kernel; CUDA, needs triton), 'reference' (dense block_diag and permutation "
                  "matrices; slow, for checking)."},
    )
    bias: Literal["none", "all", "more_only"] = field(
        default="none",
        metadata={"help": "Biases to train beside the adapter (they are saved with it): 'none', 'all' (every "
                  "bias of the model) or 'more_only' (the biases of the MoRe-adapted layers)."},
    )

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PeftType(MORE_PEFT_TYPE)
        for name in ("nblocks", "blk_sz", "blk_r"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"MoReConfig: {name} must be an integer >= 1, got {name}={value!r}.")
        resolve_nblocks(0, self.nblocks, self.blk_sz)  # exactly one of the two; the layer size comes later
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"MoReConfig: dropout must be in [0, 1), got dropout={self.dropout}.")
        if not isinstance(self.init_weights, bool):
            raise ValueError(
                f"MoReConfig: init_weights must be True (the paper's init, delta = 0 at start) or False (random "
                f"factors), got init_weights={self.init_weights!r}."
            )
        if self.kernel not in KERNEL_CHOICES:
            raise ValueError(f"MoReConfig: kernel must be one of {KERNEL_CHOICES}, got kernel={self.kernel!r}.")
        if self.bias not in BIAS_CHOICES:
            raise ValueError(f"MoReConfig: bias must be one of {BIAS_CHOICES}, got bias={self.bias!r}.")
        for name in ("target_modules", "exclude_modules"):
            value = getattr(self, name)
            if isinstance(value, list):
                setattr(self, name, set(value))
        if isinstance(self.layers_to_transform, int):
            self.layers_to_transform = [self.layers_to_transform]
