"""Which implementation runs the Monarch custom ops: the bmm products of `more.bmm` or the fused Triton
kernels of `more/kernels/triton_monarch.py`, and at which tiling.

Backends (the `backend` argument of the ops, MoReConfig's `kernel`):
- "bmm": always the bmm path;
- "triton": always the Triton kernels (CUDA, or the CPU under TRITON_INTERPRET=1), at a tiling that passed
  the check below; when no tiling passes, a RuntimeError says so and names the way out;
- "auto": bmm on the CPU and when triton is not installed; on CUDA the first call of each key measures the
  bmm path and every candidate tiling, and keeps the fastest tiling that passed the check if it beat bmm.

The check: each candidate's outputs (y forward; dx, dw1, dw2 backward, as asked) against `monarch_reference`
computed in float64 on the call's own tensors; the worst per-row relative error must stay within
`tolerance(dtype)`. A NaN or inf where the reference is finite fails; so does a candidate that raises.

The key: direction, device, dtype, torch.get_float32_matmul_precision(), in and out features, k, r, the
token count's power of two, and the gradients asked for. On CUDA each key is timed (`MEASURE_REPEATS` runs,
median of the GPU's time, launch overhead hidden: `gpu_times`); on the CPU interpreter kernel="triton" checks
the default tiling only, untimed.
"""
from __future__ import annotations

import math
import statistics
import time
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from .bmm import bmm_backward, bmm_forward, factor_sizes
from .reference import reference_outputs
from .shapes import token_count

BACKENDS = ("auto", "bmm", "triton")
MEASURE_REPEATS = 10

# Worst per-row relative error allowed against the float64 reference: about 8 units in the last place of
# the stored format (inputs, h and dh are rounded to it on the way, as on the bmm path), and for fp32 the
# TF32 inputs that torch uses unless the matmul precision is "highest".
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}
TF32_TOLERANCE = 5e-3


def triton_kernels():
    """The Triton kernel module, imported on first use (TRITON_INTERPRET can still be set before); None when
    triton is not installed."""
    try:
        from .kernels import triton_monarch
    except ImportError:
        return None
    return triton_monarch


def forward(x: Tensor, w1: Tensor, w2: Tensor, out_features: int, backend: str) -> tuple[Tensor, Tensor]:
    """(y, h) from the implementation the backend chooses for this call."""
    tiles = _triton_tiles(backend, "forward", x, w1, w2, out_features)
    if tiles is None:
        return bmm_forward(x, w1, w2, out_features)
    return triton_kernels().monarch_forward(x, w1, w2, out_features, tiles)


def backward(dy: Tensor, x: Tensor, w1: Tensor, w2: Tensor, h: Tensor, need_dx: bool, need_dw1: bool,
             need_dw2: bool, backend: str) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """(dx, dw1, dw2), None where not asked for."""
    needs = (need_dx, need_dw1, need_dw2)
    tiles = _triton_tiles(backend, "backward", x, w1, w2, dy.shape[-1], needs, (dy, h))
    if tiles is None:
        return bmm_backward(dy, x, w1, w2, h, *needs)
    return triton_kernels().monarch_backward(dy, x, w1, w2, h, *needs, tiles=tiles)


# ---------------------------------------------------------------------------------------------------
# The choice


@dataclass(frozen=True)
class Choice:
    """What the first call of one key found."""

    tiles: object | None  # the fastest Tiles that passed the check; None when none did
    triton_ms: float  # its median time (nan when untimed, inf when none passed)
    bmm_ms: float
    checks: tuple  # (Tiles, worst per-row relative error or the exception's message) per candidate

    @property
    def triton_is_faster(self) -> bool:
        return self.tiles is not None and self.triton_ms < self.bmm_ms


_CHOICES: dict[tuple, Choice] = {}


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def choice_key(direction: str, x: Tensor, w1: Tensor, w2: Tensor, out_features: int, needs: tuple = ()) -> tuple:
    k, r, _, _, in_features = factor_sizes(x, w1, w2)
    # Token counts vary from batch to batch; one entry per power of two.
    return (direction, str(x.device), x.dtype, torch.get_float32_matmul_precision(), in_features, out_features,
            k, r, _pow2(max(token_count(x.shape), 1)), tuple(needs))


def _may_measure(x: Tensor) -> bool:
    return not (x.is_cuda and torch.cuda.is_current_stream_capturing())


def _triton_tiles(backend: str, direction: str, x: Tensor, w1: Tensor, w2: Tensor, out_features: int,
                  needs: tuple = (), given: tuple = ()):
    """The Tiles to run the Triton kernels at, or None for the bmm path."""
    if backend not in BACKENDS:
        raise ValueError(f"Unknown MoRe backend {backend!r}; choose one of {BACKENDS}.")
    if backend == "bmm":
        return None
    kernels = triton_kernels()
    if backend == "auto" and (kernels is None or not x.is_cuda):
        return None
    if kernels is None:
        raise ImportError("kernel='triton' needs the triton package: pip install 'more-harness[triton]'.")
    kernels.check_device(x)
    key = choice_key(direction, x, w1, w2, out_features, needs)
    choice = _CHOICES.get(key)
    if choice is None:
        if not _may_measure(x):  # inside CUDA-graph capture nothing may be timed or checked
            return kernels.default_tiles(*factor_sizes(x, w1, w2)[:4]) if backend == "triton" else None
        choice = measure(direction, x, w1, w2, out_features, needs, given, timed=x.is_cuda)
    if backend == "triton":
        if choice.tiles is None:
            raise RuntimeError(
                f"kernel='triton': no tiling of the MoRe Triton kernel passed the check against the float64 "
                f"reference on {describe_key(key)} ({_failures(choice)}). Use kernel='bmm' or 'auto' for this "
                "layer, and please report it."
            )
        return choice.tiles
    return choice.tiles if choice.triton_is_faster else None


def describe_key(key: tuple) -> str:
    direction, device, dtype, precision, in_features, out_features, k, r, tokens, needs = key
    return (f"{direction} {in_features}x{out_features} nblocks {k} blk_r {r}, {dtype} on {device}, "
            f"float32 matmul precision {precision!r}, up to {tokens} tokens" + (f", gradients {needs}" if needs else ""))


def _failures(choice: Choice) -> str:
    return "; ".join(f"{tiles}: {error}" for tiles, error in choice.checks)


def tolerance(dtype: torch.dtype) -> float:
    if dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
        return TF32_TOLERANCE
    return TOLERANCE[dtype]


def relative_error(got: Tensor | None, want: Tensor | None, per_block: bool = False) -> float:
    """Worst per-row relative error of `got` against the reference `want`: max |got - want| over a row
    divided by the row's max |want| (at least 1e-3 of the whole tensor's, so that rows of zeros compare at
    the tensor's scale). Rows are the last dimension (one token's features), or with `per_block` the first
    (one block of a weight gradient). NaN or inf in `got` gives inf; so does a shape mismatch."""
    if got is None or want is None:
        return 0.0 if got is None and want is None else math.inf
    if got.shape != want.shape:
        return math.inf
    if got.numel() == 0:
        return 0.0
    rows = (got.shape[0], -1) if per_block else (-1, got.shape[-1])
    got, want = got.double().reshape(rows), want.double().reshape(rows)
    if not bool(torch.isfinite(got).all()):
        return math.inf
    scale = want.abs().amax(dim=1).clamp_min(1e-3 * float(want.abs().max()) + 1e-30)
    return float(((got - want).abs().amax(dim=1) / scale).max())


def check(outputs: tuple, reference: tuple, dtype: torch.dtype) -> float | str:
    """The worst error of a candidate's outputs, (y,) or (dx, dw1, dw2), if within tolerance (NaN-aware, see
    relative_error; weight gradients per block), else a message saying by how much it failed."""
    errors = [relative_error(a, b, per_block=i > 0) for i, (a, b) in enumerate(zip(outputs, reference))]
    worst = max(errors, default=0.0)
    if worst <= tolerance(dtype):  # False for NaN
        return worst
    return f"relative error {worst:.3g} > tolerance {tolerance(dtype):.3g}"


# Cycles of torch.cuda._sleep queued before each timed CUDA run (about 1 ms): the host issues the run while the
# GPU waits, so that the events time the GPU's work and not Python's launch overhead, which in eager mode can
# exceed the kernels' own time at these sizes.
HOLD_CYCLES = 2_000_000


def gpu_times(fn, repeats: int, before=None, hold: bool = True) -> list[float]:
    """Milliseconds of each of `repeats` runs of `fn` on the current CUDA device: CUDA events around each run,
    each queued behind `before()` (e.g. an L2 flush) and, with `hold`, behind a sleep (see HOLD_CYCLES) so that
    the events time the GPU's work alone. Without `hold` they also count the host's time to issue the run."""
    hold = getattr(torch.cuda, "_sleep", None) if hold else None
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
    for start, end in events:
        if before is not None:
            before()
        if hold is not None:
            hold(HOLD_CYCLES)
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return [start.elapsed_time(end) for start, end in events]


def host_times(fn, repeats: int) -> list[float]:
    """Milliseconds the host spends in each of `repeats` calls of `fn` (on CUDA: issuing it, as the GPU may
    still be running)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def _median_ms(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up, compiles on first call
    return statistics.median(gpu_times(fn, repeats) if device.type == "cuda" else host_times(fn, repeats))


def measure(direction: str, x: Tensor, w1: Tensor, w2: Tensor, out_features: int, needs: tuple = (),
            given: tuple = (), candidates=None, timed: bool = True) -> Choice:
    """Check each candidate tiling against the reference, time the passing ones and the bmm path (when
    `timed`), and keep the result for this key. The backward uses the call's (dy, h) when `given`, else a
    random dy and the forward's h. Candidates default to the kernels' own list (all of them when timed,
    the default tiling otherwise)."""
    kernels = triton_kernels()
    sizes = factor_sizes(x, w1, w2)[:4]
    if candidates is None:
        candidates = kernels.candidate_tiles(*sizes) if timed else [kernels.default_tiles(*sizes)]
    with torch.no_grad():
        if direction == "forward":
            def run_triton(tiles):
                return kernels.monarch_forward(x, w1, w2, out_features, tiles)[:1]

            def run_bmm():
                return bmm_forward(x, w1, w2, out_features)

            reference = reference_outputs("forward", x, w1, w2, out_features)
        else:
            dy, h = given or (torch.randn(*x.shape[:-1], out_features, dtype=x.dtype, device=x.device),
                              bmm_forward(x, w1, w2, out_features)[1])

            def run_triton(tiles):
                return kernels.monarch_backward(dy, x, w1, w2, h, *needs, tiles=tiles)

            def run_bmm():
                return bmm_backward(dy, x, w1, w2, h, *needs)

            reference = reference_outputs("backward", x, w1, w2, out_features, needs, dy)

        checks, timings = [], {}
        for tiles in candidates:
            try:
                verdict = check(run_triton(tiles), reference, x.dtype)
                if not isinstance(verdict, str) and timed:
                    timings[tiles] = _median_ms(lambda: run_triton(tiles), x.device, MEASURE_REPEATS)
            except Exception as err:  # e.g. a tiling the device cannot hold; the others still count
                verdict = f"{type(err).__name__}: {err}"[:300]
            checks.append((tiles, verdict))
        passed = [tiles for tiles, verdict in checks if not isinstance(verdict, str)]
        bmm_ms = _median_ms(run_bmm, x.device, MEASURE_REPEATS) if timed else math.nan
    key = choice_key(direction, x, w1, w2, out_features, needs)
    if timed and passed:
        best = min(passed, key=timings.get)
        choice = Choice(best, timings[best], bmm_ms, tuple(checks))
    else:
        choice = Choice(passed[0] if passed else None, math.nan if passed else math.inf, bmm_ms, tuple(checks))
    if len(passed) < len(checks):
        warnings.warn(f"MoRe Triton kernel: tilings failed the check against the reference on {describe_key(key)}, "
                      f"never chosen: {_failures(choice)}")
    _CHOICES[key] = choice
    return choice


def dispatch_table() -> list[dict]:
    """The choices so far, one row per key, for logs and benchmarks."""
    rows = []
    for key, choice in _CHOICES.items():
        direction, device, dtype, precision, in_f, out_f, k, r, tokens, needs = key
        rows.append(dict(direction=direction, device=device, dtype=str(dtype).removeprefix("torch."),
                         matmul_precision=precision, in_features=in_f, out_features=out_f, nblocks=k, blk_r=r,
                         tokens_bucket=tokens, needs=needs, triton_ms=choice.triton_ms, bmm_ms=choice.bmm_ms,
                         passed=sum(not isinstance(v, str) for _, v in choice.checks), candidates=len(choice.checks),
                         uses_triton=choice.triton_is_faster, tiles=choice.tiles))
    return rows
