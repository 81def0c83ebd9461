"""The calibrated untouched model: the pretrained model frozen, its head fitted to convergence on the train split.

This is the reference an adapter must beat besides the head-only control: whatever a head alone can reach on
this model and task (a temperature for the bi-encoder's cosine scale, a linear classifier on frozen features
for the other encoder heads), with no learning-rate or step budget to limit it.

The head is the module named `classifier` (every head of the harness names it so). Its inputs are computed once
on the train split with the model frozen (a forward hook, evaluation mode: no dropout); then its parameters are
fitted by full-batch L-BFGS on the cross-entropy (mean squared error for a regression head) of its outputs,
reshaped as the model's logits are, plus an L2 penalty on its weights. The penalty's strength is chosen on the
validation split (lowest validation loss over `L2_GRID`), as any other choice is: an unpenalised linear head
on a few hundred training questions fits them and loses on held-out ones.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

MAX_ITERATIONS = 500
L2_GRID = (0.0, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)  # strengths tried, times the mean squared weight


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


def head_loss(head: nn.Module, inputs: list[tuple[torch.Tensor, torch.Size]], labels: torch.Tensor,
              regression: bool = False) -> torch.Tensor:
    """The head's loss on cached inputs: cross-entropy, or mean squared error for a regression head."""
    logits = torch.cat([head(x).reshape(shape) for x, shape in inputs])
    if regression:
        return nn.functional.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
    return nn.functional.cross_entropy(logits, labels)


def fit_head(head: nn.Module, inputs: list[tuple[torch.Tensor, torch.Size]], labels: torch.Tensor,
             regression: bool = False, l2: float = 0.0) -> float:
    """Fits the head's parameters to convergence on cached inputs, with `l2` times the mean squared weight (biases
    free) added to the loss; returns the final train loss without the penalty."""
    parameters = [p for p in head.parameters() if p.requires_grad]
    weights = [p for p in parameters if p.dim() > 1]
    optimizer = torch.optim.LBFGS(parameters, lr=1.0, max_iter=MAX_ITERATIONS, tolerance_grad=1e-9,
                                  tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        value = head_loss(head, inputs, labels, regression)
        if l2 and weights:
            value = value + l2 * torch.cat([w.flatten() for w in weights]).pow(2).mean()
        value.backward()
        return value

    optimizer.step(closure)
    with torch.no_grad():
        return float(head_loss(head, inputs, labels, regression))


def fit_head_on_validation(head: nn.Module, train: tuple, validation: tuple, regression: bool = False) -> dict:
    """Fits the head at each strength of `L2_GRID` from the same start and keeps the fit with the lowest
    validation loss. `train` and `validation` are (inputs, labels). Returns the chosen l2 and its losses."""
    start = copy.deepcopy(head.state_dict())
    best = None
    for l2 in L2_GRID:
        head.load_state_dict(start)
        train_loss = fit_head(head, *train, regression=regression, l2=l2)
        with torch.no_grad():
            val_loss = float(head_loss(head, *validation, regression))
        if best is None or val_loss < best["val_loss"]:
            best = {"l2": l2, "train_loss": train_loss, "val_loss": val_loss, "state": copy.deepcopy(head.state_dict())}
    head.load_state_dict(best.pop("state"))
    return best
