"""Each metric against scikit-learn or scipy on fixed inputs, and the error bars against their definitions."""
import math

import numpy as np
import pytest
import scipy.stats
import sklearn.metrics
import torch

from harness import metrics as M

RNG = np.random.default_rng(1234)
BINARY_LABELS = RNG.integers(0, 2, 200)
BINARY_PREDICTIONS = np.where(RNG.random(200) < 0.7, BINARY_LABELS, 1 - BINARY_LABELS)
CLASS_LABELS = RNG.integers(0, 3, 300)
CLASS_PREDICTIONS = np.where(RNG.random(300) < 0.6, CLASS_LABELS, RNG.integers(0, 3, 300))
SCORES = RNG.normal(size=150)
NOISY_SCORES = SCORES + RNG.normal(scale=0.8, size=150)
TIED_SCORES = np.round(SCORES * 2) / 2  # many ties, for Spearman's average ranks


def test_accuracy_matches_sklearn():
    assert M.accuracy(CLASS_PREDICTIONS, CLASS_LABELS) == pytest.approx(
        sklearn.metrics.accuracy_score(CLASS_LABELS, CLASS_PREDICTIONS))


@pytest.mark.parametrize("positive", [1, 0])
def test_f1_matches_sklearn(positive):
    expected = sklearn.metrics.f1_score(BINARY_LABELS, BINARY_PREDICTIONS, pos_label=positive)
    assert M.f1(BINARY_PREDICTIONS, BINARY_LABELS, positive=positive) == pytest.approx(expected)


def test_f1_without_positives_is_zero_as_in_sklearn():
    zeros = np.zeros(10, dtype=int)
    assert M.f1(zeros, zeros) == sklearn.metrics.f1_score(zeros, zeros, zero_division=0) == 0.0


@pytest.mark.parametrize("predictions, labels", [
    (BINARY_PREDICTIONS, BINARY_LABELS),
    (CLASS_PREDICTIONS, CLASS_LABELS),
    (np.zeros(50, dtype=int), BINARY_LABELS[:50]),  # a constant prediction: 0, as in sklearn
    (CLASS_PREDICTIONS[:40] % 2, CLASS_LABELS[:40]),  # predictions miss a class the labels have
])
def test_matthews_matches_sklearn(predictions, labels):
    expected = sklearn.metrics.matthews_corrcoef(labels, predictions)
    assert M.matthews_corrcoef(predictions, labels) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("x, y", [(SCORES, NOISY_SCORES), (TIED_SCORES, NOISY_SCORES),
                                  (TIED_SCORES, TIED_SCORES[::-1])])
def test_pearson_and_spearman_match_scipy(x, y):
    assert M.pearson(x, y) == pytest.approx(scipy.stats.pearsonr(x, y).statistic, abs=1e-12)
    assert M.spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)


def test_correlation_of_a_constant_is_nan():
    assert math.isnan(M.pearson(np.ones(5), np.arange(5)))


def test_metrics_accept_torch_tensors_and_reject_mismatched_lengths():
    assert M.accuracy(torch.tensor([1, 0, 1]), torch.tensor([1, 1, 1])) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        M.accuracy([1, 0], [1, 0, 1])


@pytest.mark.parametrize("text, which, expected", [
    ("9 apples", "first", 9.0),
    ("2.5 cups of flour", "first", 2.5),
    ("-3 degrees", "first", -3.0),
    ("He has 3 and then 4, so 7 + 2 = 9. The answer is 9.", "last", 9.0),
    ("It costs 1,250 dollars", "last", 1250.0),
    ("no number here", "last", None),
])
def test_extract_number(text, which, expected):
    assert M.extract_number(text, which) == expected


def test_exact_match_on_numbers():
    predictions = [9.0, 3.3334, None, 12.0]
    labels = [9.0, 3.3333, 5.0, 13.0]
    assert M.exact_match(predictions, labels) == pytest.approx(0.5)  # tolerance 1e-3; None is wrong


def test_bootstrap_se_is_close_to_the_binomial_standard_error():
    labels = np.ones(400, dtype=int)
    predictions = (RNG.random(400) < 0.75).astype(int)
    p = M.accuracy(predictions, labels)
    se = M.bootstrap_se(M.accuracy, predictions, labels, n_resamples=1000, seed=0)
    assert se == pytest.approx(math.sqrt(p * (1 - p) / 400), rel=0.1)


def test_bootstrap_se_is_seeded():
    first = M.bootstrap_se(M.f1, BINARY_PREDICTIONS, BINARY_LABELS, n_resamples=200, seed=3)
    assert first == M.bootstrap_se(M.f1, BINARY_PREDICTIONS, BINARY_LABELS, n_resamples=200, seed=3)
    assert first != M.bootstrap_se(M.f1, BINARY_PREDICTIONS, BINARY_LABELS, n_resamples=200, seed=4)


def test_bootstrap_se_works_for_exact_match_with_missing_numbers():
    predictions = [1.0, None, 3.0, 4.0] * 25
    labels = [1.0, 2.0, 3.0, 5.0] * 25
    assert 0 < M.bootstrap_se(M.exact_match, predictions, labels, n_resamples=200) < 0.1


def test_standard_error_of_mean_matches_scipy():
    losses = RNG.gamma(2.0, size=64)
    assert M.standard_error_of_mean(losses) == pytest.approx(scipy.stats.sem(losses))
    assert math.isnan(M.standard_error_of_mean([1.0]))
