"""The calibrated untouched model: the pretrained model frozen, its head fitted to convergence on the train split.

This is the reference an adapter must beat besides the head-only control: whatever a head alone can reach on
this model and task (a temperature for the bi-encoder's cosine scale, a linear classifier on frozen features
for the other encoder heads), with no learning-rate or step budget to limit it.

The head is the module named `classifier` (every head of the harness names it so). Its inputs are computed once
on the train split with the model frozen (a forward hook, evaluation mode: no dropout); then its parameters are
fitted by full-batch L-BFGS on the cross-entropy (mean squared error for a regression head) of its outputs,
reshaped as the model's logits are.
"""
from __future__ import annotations

import torch
from torch import nn

MAX_ITERATIONS = 500


def head_of(model: nn.Module) -> nn.Module:
    """The model's head: its module named `classifier`."""
    try:
        return model.get_submodule("classifier")
    except AttributeError:
        raise ValueError("This model has no head named 'classifier' to calibrate: calibration needs a classification "
                         "or multiple-choice head (encoders). A decoder scored by option likelihood has no head; "
                         "its reference is the untrained model.") from None


@torch.no_grad()
def head_inputs(model: nn.Module, run) -> list[tuple[torch.Tensor, torch.Size]]:
    """(input of the head, shape of the model's logits) for each forward pass that `run()` makes."""
    inputs, shapes = [], []
    hooks = [head_of(model).register_forward_hook(lambda module, args, output: inputs.append(args[0].detach())),
             model.register_forward_hook(lambda module, args, output: shapes.append(output.logits.shape))]
    was_training = model.training
    model.eval()
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return list(zip(inputs, shapes))


def fit_head(head: nn.Module, inputs: list[tuple[torch.Tensor, torch.Size]], labels: torch.Tensor,
             regression: bool = False) -> float:
    """Fits the head's parameters to convergence on cached inputs; returns the final train loss."""
    parameters = [p for p in head.parameters() if p.requires_grad]
    optimizer = torch.optim.LBFGS(parameters, lr=1.0, max_iter=MAX_ITERATIONS, tolerance_grad=1e-9,
                                  tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        logits = torch.cat([head(x).reshape(shape) for x, shape in inputs])
        if regression:
            return nn.functional.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
        return nn.functional.cross_entropy(logits, labels)

    def closure():
        optimizer.zero_grad()
        value = loss()
        value.backward()
        return value

    optimizer.step(closure)
    with torch.no_grad():
        return float(loss())
