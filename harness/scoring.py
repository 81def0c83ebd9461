"""How a model scores a task's examples: the batches, the training loss and the evaluation, for encoders
and decoders alike, so that one training loop serves every model and every adapter.

- encoders (MiniLM): a classification head for classification tasks, a multiple-choice head for multiple-choice
  tasks (cross-encoder, or bi-encoder with `pooling="biencoder"`); cross-entropy on the label;
- decoders (SmolLM2): the task's prompt, and the log-likelihood of each option's continuation. The loss is the
  right continuation's tokens only; the prediction is the option of highest likelihood (summed over tokens, and
  per token for `length_normalised`). A generation task (ASDiv) is answered by greedy decoding: the prediction
  is the number the model writes (`Task.answer_of`), the loss the target continuation's.

Batches are built apart from the model call (`batch`, then `loss`), so that a training step can be timed
without its tokenisation.
"""
from __future__ import annotations

import torch
from torch import nn

GENERATED_TOKENS = 24  # enough for "the answer is 1234" and a little reasoning


# ---- batches ------------------------------------------------------------------------------------

def encoder_batch(tokenizer, task, examples, seq_len, device, pooling=None):
    labels = torch.tensor([e.label for e in examples], dtype=torch.float if task.kind == "regression" else torch.long)
    if pooling == "biencoder":  # the question and each option encoded apart
        choices = [task.encoder_choices(e) for e in examples]
        questions = tokenizer([c[0][0] for c in choices], truncation=True, max_length=seq_len, padding=True,
                              return_tensors="pt")
        options = tokenizer([o for c in choices for _, o in c], truncation=True, max_length=seq_len, padding=True,
                            return_tensors="pt")
        batch = {"input_ids": questions["input_ids"], "attention_mask": questions["attention_mask"],
                 "option_input_ids": options["input_ids"].view(len(examples), task.num_classes, -1),
                 "option_attention_mask": options["attention_mask"].view(len(examples), task.num_classes, -1),
                 "labels": labels}
        return {k: v.to(device) for k, v in batch.items()}
    if task.kind == "multiple_choice":
        pairs = [pair for e in examples for pair in task.encoder_choices(e)]
        enc = tokenizer([p[0] for p in pairs], [p[1] for p in pairs], truncation="only_first", max_length=seq_len,
                        padding=True, return_tensors="pt")
        options = task.num_classes
        enc = {k: v.view(len(examples), options, -1) for k, v in enc.items()}
    else:
        texts = [task.encoder_input(e) for e in examples]
        pair = [t[1] for t in texts] if all(t[1] is not None for t in texts) else None
        enc = tokenizer([t[0] for t in texts], pair, truncation=True, max_length=seq_len, padding=True,
                        return_tensors="pt")
    return {**{k: v.to(device) for k, v in enc.items()}, "labels": labels.to(device)}


def decoder_sequences(tokenizer, prompt_text: str, continuation: str, seq_len: int) -> tuple[list[int], int]:
    """Token ids of prompt + continuation, the prompt cut from the left to fit; and the continuation's length."""
    cont = tokenizer(continuation, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    prompt = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    prompt = prompt[max(0, len(prompt) + len(cont) - seq_len):]
    return prompt + cont, len(cont)


def decoder_batch(tokenizer, sequences: list[tuple[list[int], int]], device):
    """Right-padded ids, mask, and labels that are -100 except on each continuation."""
    width = max(len(ids) for ids, _ in sequences)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids = torch.full((len(sequences), width), pad)
    labels = torch.full((len(sequences), width), -100)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, (ids, n_cont) in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        mask[row, : len(ids)] = 1
        labels[row, len(ids) - n_cont: len(ids)] = torch.tensor(ids[-n_cont:])
    return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def continuation_logprobs(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence: summed log-probability of its continuation tokens, and their count."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    targets = batch["labels"][:, 1:]
    keep = targets != -100
    logprobs = torch.log_softmax(logits, dim=-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logprobs * keep).sum(-1), keep.sum(-1)


def sequences_per_example(task, decoder: bool, pooling: str | None) -> int:
    """How many sequences one example puts through the model in a training step: a cross-encoder encodes each
    multiple-choice option with its question, a bi-encoder the question and each option apart; a classifier and a
    decoder (trained on the right continuation only) one sequence."""
    if decoder or task.kind != "multiple_choice":
        return 1
    return task.num_classes + (1 if pooling == "biencoder" else 0)


# ---- how encoders and decoders score a task ------------------------------------------------------------------------------

class EncoderScoring:
    def __init__(self, task, tokenizer, seq_len, device, pooling=None):
        self.task, self.tokenizer, self.seq_len, self.device, self.pooling = task, tokenizer, seq_len, device, pooling

    def batch(self, examples) -> tuple[dict, int]:
        """The model's inputs for these examples, and how many tokens they hold."""
        batch = encoder_batch(self.tokenizer, self.task, examples, self.seq_len, self.device, self.pooling)
        return batch, sum(int(v.sum()) for k, v in batch.items() if k.endswith("attention_mask"))

    def loss(self, model, batch) -> torch.Tensor:
        return model(**batch).loss

    @torch.no_grad()
    def evaluate(self, model, examples, batch_size) -> tuple[list, list[float]]:
        predictions, losses = [], []
        for i in range(0, len(examples), batch_size):
            batch, _ = self.batch(examples[i:i + batch_size])
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
            if self.task.kind == "regression":
                predictions += logits.squeeze(-1).tolist()
                losses += ((logits.squeeze(-1) - batch["labels"]) ** 2).tolist()
            else:
                predictions += logits.argmax(-1).tolist()
                losses += nn.functional.cross_entropy(logits, batch["labels"], reduction="none").tolist()
        return predictions, losses


class DecoderScoring:
    def __init__(self, task, tokenizer, seq_len, device, style):
        self.task, self.tokenizer, self.seq_len, self.device, self.style = task, tokenizer, seq_len, device, style
        self.length_normalised: list[int] = []

    def _sequences(self, example, which=None):
        prompt = self.task.decoder_prompt(example, style=self.style)
        options = range(len(prompt.continuations)) if which is None else [prompt.target]
        return [decoder_sequences(self.tokenizer, prompt.text, prompt.continuations[o], self.seq_len) for o in options], prompt.target

    def batch(self, examples) -> tuple[dict, int]:
        sequences = [self._sequences(e, which="target")[0][0] for e in examples]
        batch = decoder_batch(self.tokenizer, sequences, self.device)
        return batch, int(batch["attention_mask"].sum())

    def loss(self, model, batch) -> torch.Tensor:
        return model(**batch).loss

    @torch.no_grad()
    def evaluate(self, model, examples, batch_size) -> tuple[list, list[float]]:
        if self.task.kind == "generation":
            return self._generate(model, examples, batch_size)
        predictions, losses, normalised = [], [], []
        for i in range(0, len(examples), batch_size):
            chunk = [self._sequences(e) for e in examples[i:i + batch_size]]
            flat = [s for sequences, _ in chunk for s in sequences]
            total, count = continuation_logprobs(model, decoder_batch(self.tokenizer, flat, self.device))
            start = 0
            for sequences, target in chunk:
                n = len(sequences)
                summed, per_token = total[start:start + n], total[start:start + n] / count[start:start + n]
                predictions.append(int(summed.argmax()))
                normalised.append(int(per_token.argmax()))
                losses.append(float(-per_token[target]))  # the right answer's mean token loss
                start += n
        self.length_normalised = normalised
        return predictions, losses

    def _generate(self, model, examples, batch_size) -> tuple[list, list[float]]:
        """Greedy answers, read as numbers; the loss is the target continuation's mean token loss."""
        predictions, losses = [], []
        for example in examples:
            prompt = self.task.decoder_prompt(example, style=self.style)
            ids = self.tokenizer(prompt.text, add_special_tokens=False, return_tensors="pt")["input_ids"]
            ids = ids[:, -(self.seq_len - GENERATED_TOKENS):].to(self.device)
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=GENERATED_TOKENS,
                                 do_sample=False, pad_token_id=self.tokenizer.pad_token_id)
            predictions.append(self.task.answer_of(self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)))
        for i in range(0, len(examples), batch_size):
            chunk = [self._sequences(e, which="target")[0][0] for e in examples[i:i + batch_size]]
            total, count = continuation_logprobs(model, decoder_batch(self.tokenizer, chunk, self.device))
            losses += (-total / count).tolist()
        self.length_normalised = []
        return predictions, losses
