"""Evaluation metrics, written out with numpy so that each one is a few readable lines.

Every metric takes (predictions, labels), as sequences, numpy arrays or torch tensors, and returns a float.
The tests hold each against scikit-learn or scipy on fixed inputs. Undefined cases follow scikit-learn:
Matthews correlation and F1 are 0 when their denominator is 0; Pearson and Spearman are nan for a constant input.

Error bars: `bootstrap_se` resamples the eval set (seeded, 1000 resamples by default) for any metric;
`standard_error_of_mean` is the usual s / sqrt(n), e.g. for a mean eval loss.
"""
from __future__ import annotations

import math
import re
from typing import Callable, Sequence

import numpy as np


def _array(values, dtype=None) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor, possibly on a GPU
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=dtype)


def _pair(predictions, labels, dtype=None) -> tuple[np.ndarray, np.ndarray]:
    predictions, labels = _array(predictions, dtype), _array(labels, dtype)
    if predictions.shape != labels.shape or predictions.ndim != 1:
        raise ValueError(f"predictions and labels must be 1-d and of equal length, got {predictions.shape} "
                         f"and {labels.shape}.")
    if len(labels) == 0:
        raise ValueError("A metric over no examples is undefined.")
    return predictions, labels


def accuracy(predictions, labels) -> float:
    predictions, labels = _pair(predictions, labels)
    return float(np.mean(predictions == labels))


def f1(predictions, labels, positive=1) -> float:
    """Binary F1 of the class `positive`."""
    predictions, labels = _pair(predictions, labels)
    true_positive = np.sum((predictions == positive) & (labels == positive))
    predicted, actual = np.sum(predictions == positive), np.sum(labels == positive)
    if predicted + actual == 0:
        return 0.0
    return float(2 * true_positive / (predicted + actual))


def matthews_corrcoef(predictions, labels) -> float:
    """Matthews correlation, for two classes or more (Gorodkin's R_K, as scikit-learn computes it)."""
    predictions, labels = _pair(predictions, labels)
    classes, codes = np.unique(np.concatenate([labels, predictions]), return_inverse=True)
    true, predicted = codes[: len(labels)], codes[len(labels):]
    confusion = np.zeros((len(classes), len(classes)))
    np.add.at(confusion, (true, predicted), 1)
    true_per_class, predicted_per_class = confusion.sum(1), confusion.sum(0)
    correct, total = np.trace(confusion), confusion.sum()
    numerator = correct * total - true_per_class @ predicted_per_class
    denominator = math.sqrt((total**2 - predicted_per_class @ predicted_per_class)
                            * (total**2 - true_per_class @ true_per_class))
    return 0.0 if denominator == 0 else float(numerator / denominator)


def pearson(predictions, labels) -> float:
    x, y = _pair(predictions, labels, dtype=float)
    x, y = x - x.mean(), y - y.mean()
    denominator = math.sqrt((x @ x) * (y @ y))
    return float("nan") if denominator == 0 else float(x @ y / denominator)


def spearman(predictions, labels) -> float:
    """Pearson correlation of the ranks, ties given their average rank."""
    x, y = _pair(predictions, labels, dtype=float)
    return pearson(_average_ranks(x), _average_ranks(y))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts_group = np.r_[True, ordered[1:] != ordered[:-1]]
    group = np.cumsum(starts_group) - 1
    starts = np.flatnonzero(starts_group)
    ends = np.r_[starts[1:], len(values)]  # one past each group's last position
    mean_rank = (starts + ends + 1) / 2  # 1-based ranks starts+1 .. ends, averaged
    ranks = np.empty(len(values))
    ranks[order] = mean_rank[group]
    return ranks


# --------------------------------------------------------------------------------------------------
# Numbers in text (math word problems)

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?|-?\.\d+")
NUMBER_TOLERANCE = 1e-3  # as LLM-Adapters' math evaluation: |prediction - label| < 0.001


def extract_number(text: str, which: str = "last") -> float | None:
    """The first or last number in `text` (thousands commas dropped), or None if there is none.

    Gold answers ("9 apples") take the first number; model outputs take the last, since a model that
    reasons before answering ends with its answer ("... so 7 + 2 = 9. The answer is 9").
    """
    if which not in ("first", "last"):
        raise ValueError(f"which must be 'first' or 'last', got {which!r}.")
    numbers = _NUMBER.findall(re.sub(r"(?<=\d),(?=\d{3}\b)", "", text))
    if not numbers:
        return None
    return float(numbers[0] if which == "first" else numbers[-1])


def exact_match(predictions: Sequence[float | None], labels) -> float:
    """Fraction of predicted numbers equal to the label within NUMBER_TOLERANCE; a None prediction is wrong."""
    labels = _array(labels, dtype=float)
    if len(predictions) != len(labels) or len(labels) == 0:
        raise ValueError("predictions and labels must be non-empty and of equal length.")
    hits = [p is not None and abs(float(p) - label) < NUMBER_TOLERANCE for p, label in zip(predictions, labels)]
    return float(np.mean(hits))


# --------------------------------------------------------------------------------------------------
# Error bars


def bootstrap_se(metric: Callable, predictions, labels, n_resamples: int = 1000, seed: int = 0) -> float:
    """Standard error of `metric` over the eval set: the standard deviation of the metric on `n_resamples`
    resamples (with replacement, seeded) of the examples. Resamples where the metric is nan are skipped."""
    predictions, labels = _array(predictions), _array(labels)  # None predictions make an object array: fine
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_resamples):
        index = rng.integers(0, len(labels), len(labels))
        values.append(metric(predictions[index], labels[index]))
    values = np.array(values, dtype=float)
    values = values[~np.isnan(values)]
    return float(values.std(ddof=1)) if len(values) > 1 else float("nan")


def standard_error_of_mean(values) -> float:
    """s / sqrt(n) with the sample standard deviation, e.g. for a mean loss over eval batches or examples."""
    values = _array(values, dtype=float)
    if len(values) < 2:
        return float("nan")
    return float(values.std(ddof=1) / math.sqrt(len(values)))


METRICS: dict[str, Callable] = {
    "accuracy": accuracy,
    "f1": f1,
    "matthews": matthews_corrcoef,
    "pearson": pearson,
    "spearman": spearman,
    "exact_match": exact_match,
}
