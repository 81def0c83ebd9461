"""Intervals from per-example outputs: one arm's metric, and the paired difference between two arms.

An arm is one configuration trained with several seeds; its outputs are, per seed, one row per evaluated
example (`example_id, label, prediction, correct, loss`, as `results/<study>/examples/<trial_id>.csv.gz` holds
them). Two arms are compared on the same examples and the same seeds, so the comparison is paired.

The interval is a two-level percentile bootstrap: each resample draws the seeds with replacement and the
examples with replacement, the same draw for both arms and every seed, and recomputes the statistic (the metric
averaged over the drawn seeds, or the difference of two such averages). With one seed it is the usual paired
bootstrap over examples. scipy's `bootstrap` resamples one level only, so the two levels are drawn here with
numpy; the metrics themselves are `harness.metrics`' (scikit-learn and scipy).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import pandas as pd

from . import metrics as M

N_RESAMPLES = 2000
CONFIDENCE = 0.95
LOWER_IS_BETTER = {"loss"}
RESOLVED_SE = 2.0  # a difference is resolved when it exceeds this many of its (paired) standard errors
Outputs = Mapping[int, pd.DataFrame]  # seed -> one row per example


@dataclass(frozen=True)
class Interval:
    """A statistic over examples and seeds: its value, bootstrap standard error and percentile interval."""

    metric: str
    value: float
    se: float
    low: float
    high: float
    seeds: int
    examples: int

    @property
    def resolved(self) -> bool:
        """The difference exceeds RESOLVED_SE standard errors: the rule that `learns` applies to the margin over a
        reference (harness.analysis). A skewed bootstrap interval can exclude zero at a smaller z."""
        return abs(self.value) > RESOLVED_SE * self.se

    @property
    def z(self) -> float:
        return self.value / self.se if self.se else math.nan

    def margin(self) -> float:
        """The difference in the metric's good direction: positive means the first arm is better."""
        return -self.value if self.metric in LOWER_IS_BETTER else self.value


def _per_seed(outputs: Outputs, seeds: list[int], ids: pd.Index) -> list[pd.DataFrame]:
    return [outputs[seed].drop_duplicates("example_id").set_index("example_id").loc[ids] for seed in seeds]


def _scorer(metric: str):
    """(frame, example positions) -> the metric on those examples; the mean of a column where it decomposes."""
    if metric == "loss":
        return lambda frame: (frame["loss"].to_numpy(float), None)
    if metric in ("accuracy", "exact_match"):
        return lambda frame: (frame["correct"].to_numpy(float), None)
    if metric not in M.METRICS:
        raise ValueError(f"Unknown metric {metric!r}; choose loss or one of {', '.join(M.METRICS)}.")
    return lambda frame: (frame["prediction"].to_numpy(), frame["label"].to_numpy())


def _value(metric: str, column, labels, index=None) -> float:
    if labels is None:
        return float(np.mean(column if index is None else column[index]))
    if index is not None:
        column, labels = column[index], labels[index]
    return M.METRICS[metric](column.astype(float), labels.astype(float))


def _bootstrap(arms: list[Outputs], metric: str, sign: list[float], n_resamples: int, confidence: float,
               seed: int) -> Interval:
    seeds = sorted(set.intersection(*(set(arm) for arm in arms)))
    if not seeds:
        raise ValueError("The arms share no seed: a paired comparison needs the same seeds in both.")
    ids = pd.Index(sorted(set.intersection(*(set(arm[s]["example_id"]) for arm in arms for s in seeds))))
    if len(ids) < 2:
        raise ValueError("The arms share fewer than two evaluated examples: nothing to compare.")
    scorer = _scorer(metric)
    # data[a][s] = (values, labels) of arm a, seed s, on the common examples in one order
    data = [[scorer(frame) for frame in _per_seed(arm, seeds, ids)] for arm in arms]

    def statistic(seed_draw, example_draw) -> float:
        return sum(w * np.mean([_value(metric, *data[a][s], example_draw) for s in seed_draw])
                   for a, w in enumerate(sign))

    rng = np.random.default_rng(seed)
    n_seeds, n_examples = len(seeds), len(ids)
    point = statistic(range(n_seeds), None)
    replicates = np.array([
        statistic(rng.integers(0, n_seeds, n_seeds) if n_seeds > 1 else [0], rng.integers(0, n_examples, n_examples))
        for _ in range(n_resamples)])
    replicates = replicates[~np.isnan(replicates)]
    tail = (1 - confidence) / 2
    low, high = np.quantile(replicates, [tail, 1 - tail])
    return Interval(metric, float(point), float(replicates.std(ddof=1)), float(low), float(high), n_seeds, n_examples)


def estimate(arm: Outputs, metric: str, n_resamples: int = N_RESAMPLES, confidence: float = CONFIDENCE,
             seed: int = 0) -> Interval:
    """One arm's metric, averaged over its seeds, with an interval over examples and seeds."""
    return _bootstrap([arm], metric, [1.0], n_resamples, confidence, seed)


def paired_difference(a: Outputs, b: Outputs, metric: str, n_resamples: int = N_RESAMPLES,
                      confidence: float = CONFIDENCE, seed: int = 0) -> Interval:
    """metric(a) - metric(b) on the same examples and seeds, with its paired interval."""
    return _bootstrap([a, b], metric, [1.0, -1.0], n_resamples, confidence, seed)
