"""Heads the registry builds on an encoder: mean pooling (`MeanPooledHead`) for classification and
multiple choice, and the bi-encoder multiple-choice head (`BiEncoderChoice`), whose one trained
parameter is a cosine scale. Each names its trained layer `classifier`, as transformers' heads do,
so `modules_to_save=["classifier"]` trains and saves it whatever the pooling."""
from __future__ import annotations

import math

import torch
from torch import nn
from transformers.modeling_outputs import MultipleChoiceModelOutput, SequenceClassifierOutput



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
