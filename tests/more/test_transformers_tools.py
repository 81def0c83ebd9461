"""MoRe with the tools users train with: transformers' Trainer, then loading through PEFT and through transformers."""
import peft
import torch
from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments

import more  # noqa: F401  (registers MoRe with PEFT)
from more import MoReConfig, MoReLinear


def classifier(minilm_dir):
    return AutoModelForSequenceClassification.from_pretrained(minilm_dir, num_labels=2)


def logits(model, tokens):
    model.eval()
    with torch.no_grad():
        return model(input_ids=tokens).logits


def factors(model):
    return {n.split("base_model.model.")[-1]: p.detach().clone() for n, p in model.named_parameters()
            if "more_blkdiag" in n}


def test_trainer_trains_saves_and_both_loaders_restore_it(minilm_dir, tmp_path):
    generator = torch.Generator().manual_seed(0)
    examples = [{"input_ids": torch.randint(1000, 20000, (12,), generator=generator),
                 "attention_mask": torch.ones(12, dtype=torch.long), "labels": i % 2} for i in range(16)]
    model = peft.get_peft_model(classifier(minilm_dir), MoReConfig(nblocks=4, blk_r=2, task_type="SEQ_CLS"))
    args = TrainingArguments(output_dir=str(tmp_path / "run"), max_steps=4, per_device_train_batch_size=4,
                             learning_rate=1e-2, report_to=[], use_cpu=True, save_strategy="no", logging_steps=1,
                             disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=examples)
    trainer.train()
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    trained = factors(model)
    assert all(torch.count_nonzero(w) > 0 for n, w in trained.items() if "blkdiag2" in n)  # w2 left zero init
    trainer.save_model(str(tmp_path / "adapter"))

    tokens = torch.stack([e["input_ids"] for e in examples[:4]])
    expected = logits(model, tokens)
    with model.disable_adapter():
        assert not torch.allclose(logits(model, tokens), expected, atol=1e-4)  # the trained adapter matters

    through_peft = peft.PeftModel.from_pretrained(classifier(minilm_dir), tmp_path / "adapter")
    assert torch.equal(logits(through_peft, tokens), expected)

    through_transformers = classifier(minilm_dir)
    through_transformers.load_adapter(str(tmp_path / "adapter"))
    assert any(isinstance(m, MoReLinear) for m in through_transformers.modules())
    assert torch.equal(logits(through_transformers, tokens), expected)
    loaded = factors(through_transformers)
    assert loaded.keys() == trained.keys() and all(torch.equal(loaded[n], trained[n]) for n in trained)
