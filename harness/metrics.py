"""Evaluation metrics: the implementations the field trusts (scikit-learn, scipy), behind one signature.

Every metric takes (predictions, labels), as sequences, numpy arrays or torch tensors, and returns a float.
Undefined cases follow scikit-learn and scipy: Matthews correlation and F1 are 0 when their denominator is 0;
Pearson and Spearman are nan for a constant input.

Error bars: `bootstrap_se` is scipy's paired bootstrap of any metric over the examples (seeded, 1000
resamples by default); `standard_error_of_mean` is scipy's s / sqrt(n), e.g. for a mean loss.
"""
from __future__ import annotations

import math
import re
import warnings
from typing import Callable, Sequence

import numpy as np
import scipy.stats
import sklearn.metrics


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
    return float(sklearn.metrics.accuracy_score(labels, predictions))


def f1(predictions, labels, positive=1) -> float:
    """Binary F1 of the class `positive`."""
    predictions, labels = _pair(predictions, labels)
    return float(sklearn.metrics.f1_score(labels, predictions, pos_label=positive, average="binary",
                                          labels=[positive], zero_division=0))


def matthews_corrcoef(predictions, labels) -> float:
    """Matthews correlation, for two classes or more."""
    predictions, labels = _pair(predictions, labels)
    return float(sklearn.metrics.matthews_corrcoef(labels, predictions))


def pearson(predictions, labels) -> float:
    x, y = _pair(predictions, labels, dtype=float)
    return _correlation(scipy.stats.pearsonr, x, y)


def spearman(predictions, labels) -> float:
    """Pearson correlation of the ranks, ties given their average rank."""
    x, y = _pair(predictions, labels, dtype=float)
    return _correlation(scipy.stats.spearmanr, x, y)


def _correlation(function, x: np.ndarray, y: np.ndarray) -> float:
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")  # undefined for a constant input
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.stats.ConstantInputWarning)
        return float(function(x, y).statistic)


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
    hits = [p is not None and not math.isnan(p) and abs(float(p) - label) < NUMBER_TOLERANCE
            for p, label in zip(predictions, labels)]
    return float(np.mean(hits))


# --------------------------------------------------------------------------------------------------
# Error bars


def bootstrap_se(metric: Callable, predictions, labels, n_resamples: int = 1000, seed: int = 0) -> float:
    """Standard error of `metric` over the examples: scipy's paired bootstrap (`n_resamples` resamples of the
    examples with replacement, seeded). A missing prediction (None) stays missing: it scores as wrong."""
    predictions = np.array([np.nan if p is None else p for p in _array(predictions, dtype=object)], dtype=float)
    labels = _array(labels, dtype=float)
    if len(labels) < 2:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate resamples (a constant) give nan, which scipy reports
        result = scipy.stats.bootstrap((predictions, labels), lambda p, y: metric(p, y), paired=True,
                                       vectorized=False, n_resamples=n_resamples, method="percentile",
                                       random_state=np.random.default_rng(seed))
    return float(result.standard_error)


def standard_error_of_mean(values) -> float:
    """s / sqrt(n) with the sample standard deviation, e.g. for a mean loss over examples."""
    values = _array(values, dtype=float)
    if len(values) < 2:
        return float("nan")
    return float(scipy.stats.sem(values))


METRICS: dict[str, Callable] = {
    "accuracy": accuracy,
    "f1": f1,
    "matthews": matthews_corrcoef,
    "pearson": pearson,
    "spearman": spearman,
    "exact_match": exact_match,
}
