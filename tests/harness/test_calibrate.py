"""The calibrated reference: a head fitted on frozen features reaches the best loss any head can."""
import math

import torch

from harness.calibrate import L2_GRID, fit_head, fit_head_on_validation, head_inputs, head_loss, head_of
from harness.models import load_model
from harness.tasks import load_task
from harness.scoring import EncoderScoring


def test_calibrating_the_biencoder_scale_lowers_the_loss_and_keeps_the_ranking():
    task = load_task("commonsenseqa")
    model, tokenizer, info = load_model("minilm", head="multiple_choice", pooling="biencoder")
    model.eval()  # no dropout: the same predictions before and after
    family = EncoderScoring(task, tokenizer, 64, torch.device("cpu"), info.pooling)
    train, test = task.train(limit=96), task.split("test", limit=48)
    before_predictions, before_losses = family.evaluate(model, test, 32)
    inputs = head_inputs(model, lambda: family.evaluate(model, train, 32))
    assert len(inputs) == 3 and inputs[0][1] == (32, 5)
    start_scale = float(head_of(model).log_scale.exp())
    train_loss = fit_head(head_of(model), inputs, torch.tensor([e.label for e in train]))
    after_predictions, after_losses = family.evaluate(model, test, 32)
    assert float(head_of(model).log_scale.exp()) < start_scale  # 20 is too sharp a scale for this task
    assert train_loss < 1.6 and sum(after_losses) < sum(before_losses)
    assert after_predictions == before_predictions  # a positive scale cannot change which option ranks first


def test_the_cross_encoder_head_takes_the_l2_penalty_validation_prefers_and_beats_an_unpenalised_fit():
    """A new linear head (385 parameters) on frozen mean-pooled features fits 96 training questions and loses on
    held-out ones; the penalty chosen on validation keeps it from that."""
    task = load_task("commonsenseqa")
    model, tokenizer, info = load_model("minilm", head="multiple_choice", pooling="mean")
    family = EncoderScoring(task, tokenizer, 64, torch.device("cpu"), info.pooling)

    def cached(examples):
        return head_inputs(model, lambda: family.evaluate(model, examples, 32)), torch.tensor([e.label for e in examples])

    train, validation = cached(task.train(limit=96)), cached(task.split("validation", limit=64))
    head = head_of(model)
    start = {k: v.clone() for k, v in head.state_dict().items()}
    fit_head(head, *train)
    with torch.no_grad():
        unpenalised = float(head_loss(head, *validation))
    head.load_state_dict(start)
    chosen = fit_head_on_validation(head, train, validation)
    assert chosen["l2"] in L2_GRID and chosen["l2"] > 0
    assert chosen["val_loss"] < unpenalised and chosen["val_loss"] < math.log(5) < unpenalised
    with torch.no_grad():
        assert float(head_loss(head, *validation)) == chosen["val_loss"]  # the head keeps the chosen fit
