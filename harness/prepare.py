"""A trial's model, ready to measure or train: loaded by name with the head its trial needs, and the
adapter put on its target modules. Every kind of trial prepares its model here.

- The head (`choose_head`): decoders score by log-likelihood and keep their causal-LM head; encoders
  get a multiple-choice head for multiple-choice tasks, a classification head for other tasks, and a
  two-label classification head when there is no task (a measure trial), unless it names its head.
- The targets (`default_targets`): the paper's q, k, v for every adapter alike, so that methods are
  compared on the same layers.
- New heads (`new_heads`) are trained, saved and counted with the adapter (`modules_to_save`). A
  training trial's control (no adapter) trains its new head alone; a measure trial's control is the
  bare model with every parameter trainable.
"""
from __future__ import annotations

import peft
import torch
from torch import nn

from more.config import TRANSFORMERS_MODELS_TO_MORE_TARGET_MODULES

from .adapters import AdapterSpec
from .models import LoadedModel, is_decoder, load_model, origin_of
from .trial import TrialConfig


def choose_head(config: TrialConfig, task=None) -> tuple[str, int | None]:
    """The head a trial's model gets, and its number of labels."""
    if config.head is not None:
        return config.head, 2 if config.head == "sequence_classification" else None
    if is_decoder(config.model):
        return "causal_lm", None
    if task is not None and task.kind == "multiple_choice":
        return "multiple_choice", None
    return "sequence_classification", task.num_classes if task is not None else 2


def default_targets(model: nn.Module) -> list[str]:
    model_type = model.config.model_type
    if model_type not in TRANSFORMERS_MODELS_TO_MORE_TARGET_MODULES:
        raise ValueError(f"No default target modules for model type {model_type!r}; pass target modules explicitly.")
    return TRANSFORMERS_MODELS_TO_MORE_TARGET_MODULES[model_type]


def new_heads(model: nn.Module, head: str) -> list[str]:
    """A classification or multiple-choice head is newly initialised: it is trained, saved and counted."""
    if head not in ("sequence_classification", "multiple_choice"):
        return []
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    return [n for n in ("classifier", "score") if n in names]


def apply_adapter(model: nn.Module, spec: AdapterSpec | None, head: str, target_modules=None) -> nn.Module:
    if spec is None:
        return model
    target_modules = list(target_modules or default_targets(model))
    task_type = "CAUSAL_LM" if head == "causal_lm" else None
    config = spec.peft_config(target_modules=target_modules, modules_to_save=new_heads(model, head) or None,
                              task_type=task_type)
    return peft.get_peft_model(model, config)


def prepare_model(config: TrialConfig, adapter: AdapterSpec | None, task=None) -> LoadedModel:
    """The trial's model with `adapter` on it (an interleaved trial prepares one per adapter)."""
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda was asked for, but no CUDA device is available here. Use device cpu.")
    head, num_labels = choose_head(config, task)
    on_meta = origin_of(config.model) == "paper_scale" and device.type == "cpu"  # counted, never run, on a CPU
    model, tokenizer, info = load_model(config.model, head=head, num_labels=num_labels,
                                        device=None if on_meta else config.device, pooling=config.pooling)
    if tokenizer is not None and tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if adapter is None and config.kind == "train":  # the control: the pretrained model frozen, a new head trains
        model.requires_grad_(False)
        for name in new_heads(model, head):
            getattr(model, name).requires_grad_(True)
    return LoadedModel(apply_adapter(model, adapter, head, config.target_modules), tokenizer, info)
