"""Intervals over examples and seeds, paired between arms, held against their definitions and scipy."""
import math

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from harness import stats

RNG = np.random.default_rng(7)
N = 400
LABELS = RNG.integers(0, 5, N)


def outputs(correct: np.ndarray, loss: np.ndarray | None = None) -> pd.DataFrame:
    prediction = np.where(correct, LABELS, (LABELS + 1) % 5)
    return pd.DataFrame({"example_id": [f"q{i}" for i in range(N)], "label": LABELS, "prediction": prediction,
                         "correct": correct.astype(int), "loss": loss if loss is not None else 1.0 - correct})


BASE = RNG.random(N) < 0.4
BETTER = BASE | (RNG.random(N) < 0.12)  # right wherever BASE is, and on some more


def test_one_arm_matches_scipys_bootstrap_with_one_seed():
    interval = stats.estimate({0: outputs(BASE)}, "accuracy")
    reference = scipy.stats.bootstrap((BASE.astype(float),), np.mean, n_resamples=2000, method="percentile",
                                      random_state=np.random.default_rng(0))
    assert interval.value == pytest.approx(BASE.mean())
    assert interval.se == pytest.approx(reference.standard_error, rel=0.1)
    assert interval.low == pytest.approx(reference.confidence_interval.low, abs=0.01)
    assert interval.seeds == 1 and interval.examples == N


def test_pairing_resolves_a_difference_that_unpaired_errors_would_hide():
    base, better = outputs(BASE), outputs(BETTER)
    difference = stats.paired_difference({0: better}, {0: base}, "accuracy")
    assert difference.value == pytest.approx(BETTER.mean() - BASE.mean())
    gained = BETTER.mean() - BASE.mean()
    assert difference.se == pytest.approx(math.sqrt(gained * (1 - gained) / N), rel=0.15)  # SE of the paired mean
    unpaired = math.hypot(stats.estimate({0: base}, "accuracy").se, stats.estimate({0: better}, "accuracy").se)
    assert difference.se < unpaired / 2
    assert difference.resolved and difference.z > 2 and difference.margin() > 0


def test_identical_arms_differ_by_nothing():
    same = stats.paired_difference({0: outputs(BASE), 1: outputs(BETTER)}, {0: outputs(BASE), 1: outputs(BETTER)},
                                   "accuracy")
    assert same.value == 0 and same.se == 0 and not same.resolved


def test_seeds_widen_the_interval():
    """Two seeds that disagree a lot: the seed level must show in the interval, not only the examples."""
    noisy = {0: outputs(BASE), 1: outputs(RNG.random(N) < 0.7)}
    steady = {0: outputs(BASE), 1: outputs(BASE)}
    assert stats.estimate(noisy, "accuracy").se > 1.5 * stats.estimate(steady, "accuracy").se


def test_loss_is_better_lower_and_other_metrics_are_recomputed():
    low_loss, high_loss = RNG.gamma(2, 0.3, N), RNG.gamma(2, 0.3, N) + 0.2
    difference = stats.paired_difference({0: outputs(BASE, low_loss)}, {0: outputs(BASE, high_loss)}, "loss")
    assert difference.value == pytest.approx(low_loss.mean() - high_loss.mean())
    assert difference.margin() > 0 and difference.resolved
    f1 = stats.estimate({0: outputs(BASE)}, "matthews", n_resamples=200)
    assert -1 <= f1.low <= f1.value <= f1.high <= 1


def test_arms_must_share_seeds_and_examples():
    with pytest.raises(ValueError, match="share no seed"):
        stats.paired_difference({0: outputs(BASE)}, {1: outputs(BASE)}, "accuracy")
    short = outputs(BASE).iloc[:10]
    difference = stats.paired_difference({0: outputs(BASE)}, {0: short}, "accuracy")
    assert difference.examples == 10  # compared on the examples both have
    with pytest.raises(ValueError, match="Unknown metric"):
        stats.estimate({0: outputs(BASE)}, "bleu")
