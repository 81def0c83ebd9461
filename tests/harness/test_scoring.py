"""How many sequences one example puts through the model in a training step (`sequences_per_example`, which
sizes the FLOPs-counting trials) against the batches the scorers really build, for every way a task is scored."""
import math

import pytest
import torch
import transformers

from harness import embedded
from harness.models import model_source
from harness.scoring import DecoderScoring, EncoderScoring, sequences_per_example
from harness.tasks import load_task

CPU = torch.device("cpu")


def sequences_in(batch: dict) -> int:
    """The sequences a built batch holds: every token-id tensor's rows, over all leading dimensions."""
    return sum(math.prod(v.shape[:-1]) for k, v in batch.items() if k.endswith("input_ids"))


@pytest.fixture(scope="module")
def minilm_tokenizer():
    return transformers.AutoTokenizer.from_pretrained(model_source("minilm"))


@pytest.mark.parametrize("task_name,pooling", [("commonsenseqa", "mean"), ("commonsenseqa", "biencoder"),
                                               ("siqa", "mean"), ("boolq", None)])
def test_encoder_batches_hold_the_sequences_the_formula_says(minilm_tokenizer, task_name, pooling):
    task = load_task(task_name)
    examples = task.train(limit=3)
    batch, _ = EncoderScoring(task, minilm_tokenizer, 32, CPU, pooling).batch(examples)
    assert sequences_in(batch) == len(examples) * sequences_per_example(task, decoder=False, pooling=pooling)


def test_a_decoder_trains_on_one_sequence_per_example():
    gguf = embedded.smollm2_gguf_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    task = load_task("commonsenseqa")
    examples = task.train(limit=3)
    batch, _ = DecoderScoring(task, tokenizer, 64, CPU, "llm_adapters").batch(examples)
    assert sequences_in(batch) == len(examples) * sequences_per_example(task, decoder=True, pooling=None) == 3
