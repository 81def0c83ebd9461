"""The eager path of the Monarch multiply (an autograd.Function) against the custom op it stands in for."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import more.bmm as bmm
from more import monarch_multiply, monarch_shape

# (in, out, nblocks, blk_r): square, rectangular both ways, sizes that do not divide
SHAPES = [(64, 64, 4, 4), (50, 70, 4, 3), (80, 48, 2, 5), (10, 14, 3, 2)]


@pytest.fixture(params=["expanded", "blocks"])
def strategy(request, monkeypatch):
    monkeypatch.setattr(bmm, "EXPANDED_MAX_KR", 10**9 if request.param == "expanded" else 0)
    return request.param


def leaves(dims, grads=(True, True, True), dtype=torch.float32):
    in_features, out_features, nblocks, blk_r = dims
    shape = monarch_shape(in_features, out_features, blk_r, nblocks)
    tensors = (torch.randn(2, 3, in_features, dtype=dtype), torch.randn(shape.w1_shape, dtype=dtype),
               torch.randn(shape.w2_shape, dtype=dtype))
    return [t.requires_grad_(g) for t, g in zip(tensors, grads)]


def run(fn, tensors, out_features, dy):
    for t in tensors:
        t.grad = None
    y = fn(*tensors, out_features)
    y.backward(dy)
    return y.detach(), [t.grad for t in tensors]


def through_op(x, w1, w2, out_features):
    return torch.ops.more.monarch(x, w1, w2, out_features, "auto")[0]


@pytest.mark.parametrize("dims", SHAPES)
@pytest.mark.parametrize("grads", [(True, True, True), (False, True, True), (True, False, True)])
def test_eager_path_equals_the_custom_op(strategy, dims, grads):
    tensors = leaves(dims, grads)
    dy = torch.randn(2, 3, dims[1])
    y, eager_grads = run(monarch_multiply, tensors, dims[1], dy)
    y_op, op_grads = run(through_op, tensors, dims[1], dy)
    assert torch.equal(y, y_op)
    for got, want, needed in zip(eager_grads, op_grads, grads):
        assert (got is None) == (not needed)
        if needed:
            assert torch.equal(got, want)


@pytest.mark.parametrize("dims", SHAPES[:2])
def test_eager_path_gradcheck_fp64(strategy, dims):
    x, w1, w2 = leaves(dims, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda *t: monarch_multiply(*t, dims[1]), (x, w1, w2))


def test_plain_calls_take_the_eager_path_and_counting_takes_the_op():
    x, w1, w2 = leaves(SHAPES[0])
    assert type(monarch_multiply(x, w1, w2, 64).grad_fn).__name__ == "_EagerMonarchBackward"
    with FlopCounterMode(display=False) as counter:
        monarch_multiply(x, w1, w2, 64).sum().backward()
    counts = {str(k) for k in counter.get_flop_counts()["Global"]}
    assert {"more.monarch", "more.monarch_backward"} <= counts
    inputs = tuple(t.detach() for t in (x, w1, w2))
    traced = torch.jit.trace(lambda x, w1, w2: monarch_multiply(x, w1, w2, 64), inputs)
    assert "more::monarch" in str(traced.graph)  # fvcore counts the op by name
