"""The calibrated reference: a head fitted on frozen features reaches the best loss any head can."""
import torch

from harness.calibrate import fit_head, head_inputs, head_of
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
