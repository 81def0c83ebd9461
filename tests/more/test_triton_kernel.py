"""The fused Triton kernel against the reference, run on the CPU through Triton's interpreter.

Triton 3.9 decides between compiling and interpreting when `@triton.jit` runs, and its own language
helpers (tl.zeros, ...) are decorated when triton is first imported. `import more` already imports
triton (through peft and transformers), so the interpreter must be on before the process starts:
when this file is collected by the ordinary suite, one test (`test_kernels_under_triton_interpreter`)
runs the file again in a subprocess with TRITON_INTERPRET=1, and the other tests run only there. The
suite's own process never sees the interpreter. Run them directly with:

    TRITON_INTERPRET=1 .venv/bin/python -m pytest tests/test_triton_kernel.py

Tolerances, relative to the largest magnitude of each reference tensor (computed in float64):
fp32 1e-5; fp16 4e-3 (about 2**-8: inputs, h and dh are rounded to fp16 on the way, as on the bmm
path); bf16 3e-2 (the same with bf16's 8-bit significand).
"""
import importlib
import itertools
import os
import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

pytest.importorskip("triton")

import more  # noqa: E402
import more.bmm  # noqa: E402
import more.dispatch  # noqa: E402
from more import monarch_multiply, monarch_reference, monarch_shape  # noqa: E402

TOLERANCE = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}

# (in, out, nblocks, blk_r, leading dims): blk_r 1, 4, 16 and 20 (> 16, padded to 32 in the kernel);
# nblocks 1, 2, 4, 16; square, rectangular both ways, non-divisible sizes; 1 to 3 leading dims.
CASES = [
    (64, 64, 4, 4, (9,)),  # the paper's default
    (48, 80, 2, 1, (2, 5)),
    (80, 48, 4, 16, (3, 1, 4)),
    (91, 36, 16, 3, (7,)),  # 91 = 15 blocks of 6 + 1: padding on both sides
    (64, 96, 16, 20, (2, 3)),
    (50, 70, 1, 4, (2, 2, 2)),  # nblocks 1 is LoRA of rank blk_r
    (50, 70, 4, 3, (5,)),
]


INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"


def under_interpreter(test):
    """Keeps a test for the interpreter subprocess: elsewhere the name is bound to None and not collected."""
    return test if INTERPRETING else None


@pytest.mark.skipif(INTERPRETING, reason="this process is the interpreter run")
def test_kernels_under_triton_interpreter():
    result = subprocess.run(
        [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-W", "ignore::FutureWarning"],
        env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-4000:]
    print(result.stdout.strip().splitlines()[-1])  # the subprocess's own summary line, shown with pytest -s


@pytest.fixture
def kernels():
    return importlib.import_module("more.kernels.triton_monarch")


def factors(in_features, out_features, nblocks, blk_r, dtype=torch.float32):
    shape = monarch_shape(in_features, out_features, blk_r, nblocks)
    return torch.randn(shape.w1_shape, dtype=dtype), torch.randn(shape.w2_shape, dtype=dtype)


def output_and_grads(fn, x, w1, w2, out_features, dy):
    x, w1, w2 = (t.detach().requires_grad_() for t in (x, w1, w2))
    y = fn(x, w1, w2, out_features)
    return (y, *torch.autograd.grad(y, (x, w1, w2), dy))


def triton_multiply(x, w1, w2, out_features):
    return monarch_multiply(x, w1, w2, out_features, backend="triton")


def assert_matches_reference(got, x, w1, w2, out_features, dy, dtype):
    want = output_and_grads(monarch_reference, x.double(), w1.double(), w2.double(), out_features, dy.double())
    for name, a, b in zip(("y", "dx", "dw1", "dw2"), got, want):
        assert a.dtype == dtype and a.shape == b.shape, name
        error = (a.double() - b).abs().max() / b.abs().max()
        assert error <= TOLERANCE[dtype], f"{name}: relative error {error:.2e}"


@under_interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "{}x{}-k{}-r{}-lead{}".format(*c[:4], len(c[4])))
def test_forward_and_all_gradients_match_reference(case, dtype):
    in_features, out_features, nblocks, blk_r, lead = case
    w1, w2 = factors(in_features, out_features, nblocks, blk_r, dtype)
    x = torch.randn(*lead, in_features, dtype=dtype)
    dy = torch.randn(*lead, out_features, dtype=dtype)
    got = output_and_grads(triton_multiply, x, w1, w2, out_features, dy)
    assert_matches_reference(got, x, w1, w2, out_features, dy, dtype)


@under_interpreter
@pytest.mark.parametrize("candidate", [(16, 4, 3), (32, 4, 4), (64, 4, 3)], ids=str)
@pytest.mark.parametrize("nblocks,blk_r", [(2, 4), (16, 8)], ids=["expanded", "per-block"])
def test_every_tuning_candidate_is_exact(kernels, candidate, nblocks, blk_r):
    """Several row tiles per call, several input and output steps per tile, both ways of the second factor.
    The interpreter ignores warps and stages, so one candidate per row-tile size covers them all."""
    assert candidate in kernels.TUNING_CANDIDATES
    assert {c[0] for c in kernels.TUNING_CANDIDATES} == {16, 32, 64}
    in_features, out_features, tokens = 300, 520, 70
    w1, w2 = factors(in_features, out_features, nblocks, blk_r)
    x, dy = torch.randn(tokens, in_features), torch.randn(tokens, out_features)
    tiles = kernels.plan_tiles(nblocks, blk_r, w1.shape[2], w2.shape[1], *candidate)
    assert tiles.expanded == (nblocks * blk_r <= kernels.EXPANDED_MAX_KR)
    y, h = kernels.monarch_forward(x, w1, w2, out_features, tiles)
    grads = kernels.monarch_backward(dy, x, w1, w2, h, True, True, True, tiles)
    assert_matches_reference((y, *grads), x, w1, w2, out_features, dy, torch.float32)


# (in, out, nblocks, blk_r, tokens) for the fused backward: nblocks 4 and 16; blk_r 4, 8 and 32 (k*r 16 and 64
# run the expanded second factor, 128 runs it per block); in != out both ways; no tile size divides the tokens.
FUSED_BACKWARD_CASES = [
    (64, 96, 4, 4, 37),
    (96, 64, 16, 4, 70),
    (80, 48, 4, 8, 45),
    (64, 96, 4, 32, 19),
    (96, 80, 16, 8, 33),
]
# Every combination a training step can ask for: all, no dx (first layer), one weight frozen, dx alone.
GRADIENT_REQUESTS = [(True, True, True), (False, True, True), (True, False, True), (False, False, True),
                     (False, True, False), (True, False, False)]


def fused_backward_matches_reference(kernels, case, dtype, block_rows=32):
    in_features, out_features, nblocks, blk_r, tokens = case
    w1, w2 = factors(in_features, out_features, nblocks, blk_r, dtype)
    x, dy = torch.randn(tokens, in_features, dtype=dtype), torch.randn(tokens, out_features, dtype=dtype)
    tiles = kernels.plan_tiles(nblocks, blk_r, w1.shape[2], w2.shape[1], block_rows)
    h = kernels.monarch_forward(x, w1, w2, out_features, tiles)[1]
    want = output_and_grads(monarch_reference, x.double(), w1.double(), w2.double(), out_features, dy.double())[1:]
    for needs in GRADIENT_REQUESTS:
        got = kernels.monarch_backward(dy, x, w1, w2, h, *needs, tiles=tiles)
        for name, a, b, needed in zip(("dx", "dw1", "dw2"), got, want, needs):
            if not needed:
                assert a is None, (name, needs)
                continue
            assert a.dtype == dtype and a.shape == b.shape, (name, needs)
            error = (a.double() - b).abs().max() / b.abs().max()
            assert error <= TOLERANCE[dtype], f"{name} {needs}: relative error {error:.2e}"


@under_interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", FUSED_BACKWARD_CASES, ids=lambda c: "{}x{}-k{}-r{}-T{}".format(*c))
def test_fused_backward_gradients_match_reference(kernels, case, dtype):
    """dx, dw1 and dw2 from the one backward launch (weight gradients as per-program partial sums), for every
    combination of gradients asked for."""
    fused_backward_matches_reference(kernels, case, dtype)


@under_interpreter
@pytest.mark.parametrize("case", [FUSED_BACKWARD_CASES[0], FUSED_BACKWARD_CASES[3]], ids=["expanded", "per-block"])
def test_fused_backward_over_several_launches(kernels, monkeypatch, case):
    """Past MAX_PARTIAL_BYTES of partial sums the rows are split over launches, whose sums add up."""
    monkeypatch.setattr(kernels, "MAX_PARTIAL_BYTES", 1)  # one program per launch
    fused_backward_matches_reference(kernels, case, torch.float32, block_rows=16)


@under_interpreter
def test_largest_sizes_blk_r_64_nblocks_64(kernels):
    """k*r = 4096 features per token: the second factor runs block by block, not expanded."""
    w1, w2 = factors(256, 256, 64, 64)
    x, dy = torch.randn(20, 256), torch.randn(20, 256)
    assert not kernels.plan_tiles(64, 64, 4, 4).expanded
    got = output_and_grads(triton_multiply, x, w1, w2, 256, dy)
    assert_matches_reference(got, x, w1, w2, 256, dy, torch.float32)


@under_interpreter
def test_h_is_the_first_factor_output(kernels):
    w1, w2 = factors(50, 70, 4, 3)
    x = torch.randn(2, 5, 50)
    y, h = kernels.monarch_forward(x, w1, w2, 70, kernels.default_tiles(*w1.shape, w2.shape[1]))
    y_bmm, h_bmm = more.bmm.bmm_forward(x, w1, w2, 70)
    torch.testing.assert_close(h, h_bmm, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y, y_bmm, rtol=1e-5, atol=1e-5)


@under_interpreter
def test_only_requested_gradients_are_computed(kernels, monkeypatch):
    calls = []
    original = kernels.monarch_backward

    def spy(dy, x, w1, w2, h, need_dx, need_dw1, need_dw2, **kwargs):
        calls.append((need_dx, need_dw1, need_dw2))
        return original(dy, x, w1, w2, h, need_dx, need_dw1, need_dw2, **kwargs)

    monkeypatch.setattr(kernels, "monarch_backward", spy)
    w1, w2 = factors(64, 64, 4, 4)
    x = torch.randn(8, 64)  # no gradient asked for the input
    w1.requires_grad_()
    triton_multiply(x, w1, w2, 64).sum().backward()
    # the dispatcher's first-use check runs the kernel too, with the same request
    assert set(calls) == {(False, True, False)} and w1.grad is not None and w2.grad is None
    x.requires_grad_()
    w1.requires_grad_(False)
    triton_multiply(x, w1, w2, 64).sum().backward()
    assert calls[-1] == (True, False, False) and x.grad is not None


@under_interpreter
def test_flop_count_is_the_same_op(kernels):
    w1, w2 = factors(48, 80, 4, 3)
    w1.requires_grad_(), w2.requires_grad_()
    x = torch.randn(2, 7, 48, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        triton_multiply(x, w1, w2, 80).sum().backward()
    assert counter.get_total_flops() == 3 * monarch_shape(48, 80, 3, 4).forward_flops(tokens=14)


@under_interpreter
def test_custom_op_with_triton_backend_passes_opcheck(kernels):
    w1, w2 = factors(50, 70, 4, 3)
    w1.requires_grad_(), w2.requires_grad_()
    x = torch.randn(2, 5, 50, requires_grad=True)
    torch.library.opcheck(torch.ops.more.monarch.default, (x, w1, w2, 70, "triton"))


@under_interpreter
def test_no_tokens(kernels):
    w1, w2 = factors(64, 64, 4, 4)
    tiles = kernels.default_tiles(4, 4, 16, 16)
    x = torch.randn(0, 64)
    y, h = kernels.monarch_forward(x, w1, w2, 64, tiles)
    assert y.shape == (0, 64) and h.shape == (0, 16)
    dx, dw1, dw2 = kernels.monarch_backward(torch.randn(0, 64), x, w1, w2, h, True, True, True, tiles)
    assert dx.shape == (0, 64) and not dw1.any() and not dw2.any() and dw1.shape == w1.shape


@under_interpreter
def test_config_kernel_triton_trains_like_bmm():
    import peft

    def adapted(kernel):
        torch.manual_seed(0)
        base = torch.nn.Sequential(torch.nn.Linear(40, 56))
        config = more.MoReConfig(nblocks=4, blk_r=4, target_modules=["0"], init_weights=False, kernel=kernel)
        return peft.get_peft_model(base, config)

    x = torch.randn(3, 6, 40)
    outputs = {}
    for kernel in ("triton", "bmm"):
        model = adapted(kernel)
        y = model(x)
        y.square().sum().backward()
        layer = model.base_model.model[0]
        outputs[kernel] = (y, layer.more_blkdiag1["default"].grad, layer.more_blkdiag2["default"].grad)
    for a, b in zip(outputs["triton"], outputs["bmm"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def test_auto_and_bmm_never_run_triton_on_the_cpu(kernels, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the Triton kernel ran on the CPU")

    for name in ("monarch_forward", "monarch_backward"):
        monkeypatch.setattr(kernels, name, fail)
    monkeypatch.setattr(more.dispatch, "measure", fail)
    w1, w2 = factors(64, 64, 4, 4)
    x = torch.randn(3, 64, requires_grad=True)
    for kernel in ("auto", "bmm"):
        more.ops.monarch_kernel(kernel)(x, w1, w2, 64).sum().backward()


@under_interpreter
def test_triton_on_cpu_without_interpreter_says_what_to_do(kernels, monkeypatch):
    monkeypatch.setattr(kernels, "_interpreting", lambda: False)
    w1, w2 = factors(64, 64, 4, 4)
    with pytest.raises(RuntimeError, match="needs CUDA tensors.*kernel='bmm' or 'auto'"):
        kernels.monarch_forward(torch.randn(3, 64), w1, w2, 64, kernels.default_tiles(4, 4, 16, 16))


@under_interpreter
def test_measure_fills_the_dispatch_table(kernels, monkeypatch):
    """The first-use measurement behind kernel='auto' (on CUDA), exercised here with the CPU timer."""
    monkeypatch.setattr(more.dispatch, "_CHOICES", {})
    monkeypatch.setattr(more.dispatch, "MEASURE_REPEATS", 1)
    w1, w2 = factors(64, 64, 4, 4)
    x = torch.randn(20, 64)
    forward = more.dispatch.measure("forward", x, w1, w2, 64)
    backward = more.dispatch.measure("backward", x, w1, w2, 64, (True, True, True))
    candidates = len(kernels.TUNING_CANDIDATES)
    for choice in (forward, backward):
        assert choice.tiles is not None and choice.triton_ms > 0 and choice.bmm_ms > 0
        assert all(isinstance(error, float) for _, error in choice.checks) and len(choice.checks) == candidates
    table = more.dispatch.dispatch_table()
    assert [row["direction"] for row in table] == ["forward", "backward"]
    assert table[0]["tokens_bucket"] == 32 and table[0]["nblocks"] == 4 and table[0]["passed"] == candidates


@pytest.mark.parametrize("block_rows,num_warps", [(16, 4), (32, 4), (64, 8), (128, 8)])
def test_tiles_fit_tl_dot_and_registers(kernels, block_rows, num_warps):
    """What the interpreter cannot check: tl.dot's sizes (>= 16, powers of two) and bounded register tiles."""
    limit = kernels.TILE_ELEMENTS
    for nblocks, blk_r, in_blksz, out_blksz in itertools.product(
        [1, 2, 3, 4, 16, 33, 64], [1, 3, 4, 16, 20, 64], [1, 6, 48, 1024], [1, 5, 192, 2752]
    ):
        t = kernels.plan_tiles(nblocks, blk_r, in_blksz, out_blksz, block_rows, num_warps)
        sizes = (t.block_rows, t.block_r, t.block_in, t.block_out, t.kr_pad)
        assert all(n & (n - 1) == 0 for n in sizes), t
        assert min(sizes) >= 16 and t.block_r >= blk_r and t.kr_pad >= nblocks * blk_r, t
        assert t.expanded == (t.kr_pad <= kernels.EXPANDED_MAX_KR), t
        width = t.kr_pad if t.expanded else t.block_r  # the second factor's reduction dimension
        assert t.block_rows * width <= limit and width * t.block_out <= limit, t
        assert t.block_rows * t.block_out <= limit and t.block_rows * t.block_in <= limit, t


def _breaking(kernels, monkeypatch, broken):
    """Makes the forward kernel return NaN at the tilings for which `broken(tiles)` holds."""
    original = kernels.monarch_forward

    def forward(x, w1, w2, out_features, tiles, stats=None):
        y, h = original(x, w1, w2, out_features, tiles, stats)
        return (torch.full_like(y, float("nan")) if broken(tiles) else y), h

    monkeypatch.setattr(kernels, "monarch_forward", forward)
    monkeypatch.setattr(more.dispatch, "_CHOICES", {})
    monkeypatch.setattr(more.dispatch, "MEASURE_REPEATS", 1)


@under_interpreter
def test_a_tiling_that_fails_the_check_is_never_chosen(kernels, monkeypatch):
    _breaking(kernels, monkeypatch, lambda tiles: tiles.block_rows != 64)
    w1, w2 = factors(64, 64, 4, 4)
    x = torch.randn(20, 64)
    with pytest.warns(UserWarning, match="never chosen"):
        choice = more.dispatch.measure("forward", x, w1, w2, 64)
    verdicts = {tiles.block_rows: verdict for tiles, verdict in choice.checks}
    assert isinstance(verdicts[16], str) and isinstance(verdicts[32], str) and isinstance(verdicts[64], float)
    assert choice.tiles.block_rows == 64  # the only one that passed, however fast the others were


@under_interpreter
def test_kernel_triton_raises_when_no_tiling_passes(kernels, monkeypatch):
    _breaking(kernels, monkeypatch, lambda tiles: True)
    w1, w2 = factors(64, 64, 4, 4)
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="no tiling .* passed the check.*kernel='bmm'"):
        triton_multiply(torch.randn(20, 64), w1, w2, 64)
    y = monarch_multiply(torch.randn(20, 64), w1, w2, 64, backend="auto")  # bmm on the CPU, unaffected
    assert torch.isfinite(y).all()
