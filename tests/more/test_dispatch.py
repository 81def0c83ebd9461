"""The dispatcher's check and key, without a GPU (the kernels themselves: test_triton_kernel.py)."""
import math

import pytest
import torch

import more  # noqa: F401  (registers the ops)
from more import dispatch


def test_exact_outputs_have_no_error():
    want = torch.randn(5, 7, dtype=torch.float64)
    assert dispatch.relative_error(want.float(), want) < 1e-6
    assert dispatch.check((want.clone(),), (want,), torch.float32) == 0.0


def test_nan_or_inf_anywhere_fails_the_check():
    want = torch.randn(6, 8, dtype=torch.float64)
    for bad in (math.nan, math.inf):
        got = want.clone()
        got[3, 2] = bad
        assert dispatch.relative_error(got, want) == math.inf
        assert isinstance(dispatch.check((got,), (want,), torch.float32), str)


def test_error_is_per_row_not_diluted_by_a_large_row():
    want = torch.ones(4, 16, dtype=torch.float64)
    want[0] *= 1000  # one large row must not hide a wrong small one
    got = want.clone()
    got[2, 5] += 0.5
    assert dispatch.relative_error(got, want) == pytest.approx(0.5)
    assert (got - want).abs().max() / want.abs().max() < 1e-3  # what a global normalisation would have seen


def test_weight_gradients_compare_per_block():
    want = torch.randn(4, 3, 1, dtype=torch.float64)  # (k, s, r) with r = 1: one value per row
    got = want.clone()
    got[1, 2, 0] += 1e-3 * want[1].abs().max()
    assert dispatch.relative_error(got, want, per_block=True) == pytest.approx(1e-3, rel=1e-6)


def test_missing_or_misshapen_outputs_fail():
    want = torch.randn(3, 4, dtype=torch.float64)
    assert dispatch.relative_error(None, want) == math.inf
    assert dispatch.relative_error(torch.randn(4, 3), want) == math.inf
    assert dispatch.relative_error(None, None) == 0.0


def test_key_holds_dtype_device_and_matmul_precision():
    x, w1, w2 = torch.randn(10, 64), torch.randn(4, 4, 16), torch.randn(4, 16, 4)
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        highest = dispatch.choice_key("forward", x, w1, w2, 64)
        assert dispatch.tolerance(torch.float32) == dispatch.TOLERANCE[torch.float32]
        torch.set_float32_matmul_precision("high")
        high = dispatch.choice_key("forward", x, w1, w2, 64)
        assert dispatch.tolerance(torch.float32) == dispatch.TF32_TOLERANCE
    finally:
        torch.set_float32_matmul_precision(before)
    half = dispatch.choice_key("forward", x.half(), w1.half(), w2.half(), 64)
    assert len({highest, high, half}) == 3
    assert {"cpu", torch.float16, "highest", "high"} <= set(highest) | set(high) | set(half)


def test_unknown_backend_is_named():
    x, w1, w2 = torch.randn(10, 64), torch.randn(4, 4, 16), torch.randn(4, 16, 4)
    with pytest.raises(ValueError, match="Unknown MoRe backend 'cuda'"):
        more.monarch_multiply(x, w1, w2, 64, backend="cuda")
