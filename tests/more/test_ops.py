"""The Monarch multiply: fast path against the plain reference, its custom-op registration and FLOPs."""
import itertools

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import more.bmm as bmm
import more.ops as ops
from more import monarch_dense, monarch_multiply, monarch_reference, monarch_shape
from more.reference import reference_outputs

# (in, out, nblocks, blk_r): square, rectangular both ways, non-divisible (padding), nblocks 1..16
SHAPES = [
    (64, 64, 4, 4),
    (48, 80, 4, 3),
    (80, 48, 2, 5),
    (50, 70, 4, 3),
    (10, 14, 3, 2),
    (64, 64, 1, 6),
    (64, 96, 16, 2),
    (91, 36, 16, 3),
]
LEADING = [(), (6,), (2, 3), (2, 1, 3)]


@pytest.fixture(params=["expanded", "blocks"])
def strategy(request, monkeypatch):
    """Run each test on both ways of applying the second factor."""
    monkeypatch.setattr(bmm, "EXPANDED_MAX_KR", 10**9 if request.param == "expanded" else 0)
    return request.param


def factors(in_features, out_features, nblocks, blk_r, dtype=torch.float32):
    shape = monarch_shape(in_features, out_features, blk_r, nblocks)
    w1 = torch.randn(shape.w1_shape, dtype=dtype, requires_grad=True)
    w2 = torch.randn(shape.w2_shape, dtype=dtype, requires_grad=True)
    return w1, w2


def grads(fn, x, w1, w2, out_features, dy):
    y = fn(x, w1, w2, out_features)
    return (y, *torch.autograd.grad(y, (x, w1, w2), dy))


@pytest.mark.parametrize("dims,lead", list(itertools.product(SHAPES, LEADING)))
def test_fast_path_equals_reference(strategy, dims, lead):
    in_features, out_features, nblocks, blk_r = dims
    w1, w2 = factors(*dims)
    x = torch.randn(*lead, in_features, requires_grad=True)
    dy = torch.randn(*lead, out_features)
    fast = grads(monarch_multiply, x, w1, w2, out_features, dy)
    ref = grads(monarch_reference, x, w1, w2, out_features, dy)
    for name, a, b in zip(("y", "dx", "dw1", "dw2"), fast, ref):
        assert a.shape == b.shape, name
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4, msg=name)


@pytest.mark.parametrize("dims", [(10, 14, 3, 2), (12, 20, 4, 5), (16, 8, 1, 3), (9, 9, 2, 2)])
def test_gradcheck_fp64(strategy, dims):
    in_features, out_features, nblocks, blk_r = dims
    w1, w2 = factors(*dims, dtype=torch.float64)
    x = torch.randn(2, 3, in_features, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w1, w2: monarch_multiply(x, w1, w2, out_features), (x, w1, w2))


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 3e-2), (torch.float16, 5e-3)])
def test_half_precision_tracks_fp32(strategy, dtype, tol):
    w1, w2 = factors(64, 96, 4, 4)
    x = torch.randn(3, 5, 64)
    dy = torch.randn(3, 5, 96)
    half = [t.detach().to(dtype).requires_grad_() for t in (x, w1, w2)]
    low = grads(monarch_multiply, *half, 96, dy.to(dtype))
    high = grads(monarch_reference, x.requires_grad_(), w1, w2, 96, dy)
    for a, b in zip(low, high):
        assert a.dtype == dtype
        # relative to the tensor's scale: half formats keep ~3 (bf16) or ~4 (fp16) significant digits
        assert (a.float() - b).abs().max() <= tol * b.abs().max()


def test_only_requested_gradients_are_computed():
    w1, w2 = factors(64, 64, 4, 4)
    x = torch.randn(8, 64)  # no grad asked for the input
    with FlopCounterMode(display=False) as counter:
        monarch_multiply(x, w1, w2, 64).sum().backward()
    assert x.grad is None and w1.grad is not None and w2.grad is not None
    forward = 2 * 8 * 4 * 4 * (16 + 16)
    counts = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    # dw2, the gradient flowing into the first factor, and dw1: three products, no dx
    assert counts["more.monarch_backward"] == 2 * 8 * 4 * 4 * (16 + 16 + 16)
    assert counts["more.monarch"] == forward

    w1.grad = w2.grad = None
    w1.requires_grad_(False)
    x.requires_grad_(True)
    with FlopCounterMode(display=False) as counter:
        monarch_multiply(x, w1, w2, 64).sum().backward()
    assert w1.grad is None and x.grad is not None and w2.grad is not None


def test_training_flops_are_three_forwards():
    w1, w2 = factors(48, 80, 4, 3)
    shape = monarch_shape(48, 80, 3, 4)
    x = torch.randn(2, 7, 48, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        monarch_multiply(x, w1, w2, 80).sum().backward()
    assert counter.get_total_flops() == 3 * shape.forward_flops(tokens=14)


def test_custom_op_registration_passes_opcheck(strategy):
    w1, w2 = factors(50, 70, 4, 3)
    x = torch.randn(2, 5, 50, requires_grad=True)
    torch.library.opcheck(torch.ops.more.monarch.default, (x, w1, w2, 70))


def test_meta_device_gives_shapes_without_data():
    x = torch.empty(4, 128, 4096, device="meta")
    w1 = torch.empty(4, 4, 1024, device="meta", requires_grad=True)
    w2 = torch.empty(4, 2752, 4, device="meta", requires_grad=True)
    y = monarch_multiply(x, w1, w2, 11008)
    assert y.device.type == "meta" and y.shape == (4, 128, 11008)
    y.sum().backward()
    assert w1.grad.shape == w1.shape and w2.grad.shape == w2.shape


def test_torch_compile_fullgraph_matches_eager(strategy):
    w1, w2 = factors(48, 80, 4, 3)
    x = torch.randn(3, 48)
    compiled = torch.compile(lambda x, w1, w2: monarch_multiply(x, w1, w2, 80), fullgraph=True, backend="aot_eager")
    y = compiled(x, w1, w2)
    y.sum().backward()
    torch.testing.assert_close(y, monarch_reference(x, w1, w2, 80), rtol=1e-5, atol=1e-5)
    assert w1.grad is not None


def test_permutations_follow_the_design():
    k, r, s = 4, 3, 5
    p1, p2 = ops.permutation_p1(k, r), ops.permutation_p2(k, s)
    for f in range(k * r):  # feature f goes to block f mod k, position f div k
        assert p1[(f % k) * r + f // k, f] == 1
    for c, t in itertools.product(range(k), range(s)):  # output t of block c lands at t*k + c
        assert p2[t * k + c, c * s + t] == 1
    for p in (p1, p2):
        assert torch.equal(p @ p.T, torch.eye(p.shape[0]))


def test_dense_update_is_the_operator():
    w1, w2 = factors(50, 70, 4, 3)
    eye = torch.eye(50)
    torch.testing.assert_close(monarch_dense(w1, w2, 50, 70), monarch_reference(eye, w1, w2, 70).T)


def test_one_block_is_lora_without_scaling(strategy):
    w1, w2 = factors(40, 24, 1, 5)
    x = torch.randn(7, 40)
    lora = (x @ w1[0].T) @ w2[0].T  # A = w1[0] (r, in), B = w2[0] (out, r)
    torch.testing.assert_close(monarch_multiply(x, w1, w2, 24), lora)


@pytest.mark.parametrize("dims", [(64, 64, 4, 4), (64, 96, 4, 8), (96, 64, 8, 3), (50, 70, 4, 3), (12, 20, 4, 5)])
def test_rank_reaches_closed_form(dims):
    in_features, out_features, nblocks, blk_r = dims
    shape = monarch_shape(in_features, out_features, blk_r, nblocks)
    w1, w2 = factors(*dims, dtype=torch.float64)
    rank = torch.linalg.matrix_rank(monarch_dense(w1, w2, in_features, out_features)).item()
    assert rank == shape.max_rank
    if blk_r <= min(shape.in_blksz, out_features // nblocks):
        assert rank == nblocks * blk_r  # well inside the shapes, the rank is k * r


def test_mismatched_factors_are_rejected():
    with pytest.raises(ValueError, match="do not share nblocks and blk_r"):
        monarch_multiply(torch.randn(2, 16), torch.randn(4, 2, 4), torch.randn(2, 4, 2), 8)
    with pytest.raises(ValueError, match="covers only 12"):
        monarch_multiply(torch.randn(2, 16), torch.randn(4, 2, 3), torch.randn(4, 4, 2), 8)


@pytest.mark.parametrize("dims", [(64, 64, 4, 4), (50, 70, 4, 3), (91, 36, 16, 3), (80, 48, 2, 5)])
def test_plain_reference_gradients_match_autograd(dims):
    """The float64 gradients the kernel checks compare against, written out without autograd."""
    in_features, out_features, nblocks, blk_r = dims
    w1, w2 = factors(*dims, dtype=torch.float64)
    x = torch.randn(2, 3, in_features, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(2, 3, out_features, dtype=torch.float64)
    want = grads(monarch_reference, x, w1, w2, out_features, dy)
    (y,) = reference_outputs("forward", x, w1, w2, out_features)
    torch.testing.assert_close(y, want[0])
    for needs in [(True, True, True), (False, True, False), (True, False, True)]:
        got = reference_outputs("backward", x, w1, w2, out_features, needs, dy)
        for g, need, w in zip(got, needs, want[1:]):
            assert (g is None) == (not need)
            if need:
                torch.testing.assert_close(g, w)
