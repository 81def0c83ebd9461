"""Stage "smoke" of gpu_check: every tiling the dispatcher can choose, forward and both backward kernel
variants (with and without dx), at the benchmark shapes and dtypes, against the float64 reference.

One row per (configuration, tiling, kernel): the worst per-row relative error (more.dispatch.check: NaN-aware,
weight gradients per block), the tolerance, pass/fail, and the compiled kernel's registers and spills.
A CUDA fault ends the stage (exit code 3) after its row is written; the driver starts the stage again and
it resumes after the rows already written.
"""
from __future__ import annotations

import sys

import torch

from gpu_common import CUDA_FAULT, CsvLog, Deadline, Plan, cuda_broken, error_text, read_rows, torch_dtype

COLUMNS = ["in_features", "out_features", "tokens", "nblocks", "blk_r", "dtype", "kernel", "needs", "tiles",
           "error", "tolerance", "passed", "n_regs", "n_spills", "message"]
# The backward variants a training step runs: every gradient, and no dx (an input without gradient, as at the
# first adapted layer); each named as its compiled kernel's stats are (triton_monarch.backward_name).
BACKWARD_NEEDS = ((True, True, True), (False, True, True))


def run(plan: Plan, out, deadline: Deadline) -> int:
    import more.dispatch as dispatch
    from more.bmm import bmm_forward
    from more.reference import reference_outputs
    from more.shapes import monarch_shape

    log = CsvLog(out / "smoke.csv", COLUMNS)
    done = {tuple(row[c] for c in COLUMNS[:6]) for row in read_rows(out / "smoke.csv")}
    kernels = dispatch.triton_kernels()
    if kernels is None:
        log.add(message="skipped: triton is not installed")
        return 0
    needs_of = {kernels.backward_name(*needs): needs for needs in BACKWARD_NEEDS}
    tokens = plan.smoke_tokens
    for in_f, out_f, k, r, dtype_name in plan.smoke:
        where = dict(in_features=in_f, out_features=out_f, tokens=tokens, nblocks=k, blk_r=r, dtype=dtype_name)
        if tuple(str(v) for v in where.values()) in done:
            continue  # measured by an earlier start of this stage
        if deadline.passed():
            log.add(**where, message="skipped: the stage's time limit")
            continue
        print(f"smoke {in_f}x{out_f} k{k} r{r} {dtype_name}", flush=True)
        dtype = torch_dtype(dtype_name)
        try:
            shape = monarch_shape(in_f, out_f, r, k)
            gen = torch.Generator(device=plan.device).manual_seed(0)
            x, dy = (torch.randn(tokens, n, device=plan.device, dtype=dtype, generator=gen) for n in (in_f, out_f))
            w1 = torch.randn(shape.w1_shape, device=plan.device, dtype=dtype, generator=gen)
            w2 = torch.randn(shape.w2_shape, device=plan.device, dtype=dtype, generator=gen)
            h = bmm_forward(x, w1, w2, out_f)[1]
            want = {"forward": reference_outputs("forward", x, w1, w2, out_f)}
            for name, needs in needs_of.items():
                want[name] = reference_outputs("backward", x, w1, w2, out_f, needs, dy)
            candidates = kernels.candidate_tiles(k, r, shape.in_blksz, shape.out_blksz)
        except Exception as err:
            log.add(**where, passed=False, message="setup: " + error_text(err))
            if cuda_broken(plan.device):
                return CUDA_FAULT
            continue
        for tiles in candidates:
            for name, reference in want.items():
                stats, needs = {}, needs_of.get(name, ())
                row = dict(where, kernel=name, needs=needs, tiles=tiles, tolerance=dispatch.tolerance(dtype))
                try:
                    with torch.no_grad():
                        if name == "forward":
                            got = kernels.monarch_forward(x, w1, w2, out_f, tiles, stats=stats)[:1]
                        else:
                            got = kernels.monarch_backward(dy, x, w1, w2, h, *needs, tiles=tiles, stats=stats)
                    verdict = dispatch.check(got, reference, dtype)
                    error = verdict if isinstance(verdict, float) else max(
                        dispatch.relative_error(a, b, per_block=i > 0) for i, (a, b) in enumerate(zip(got, reference)))
                    log.add(**row, error=error, passed=isinstance(verdict, float),
                            message="" if isinstance(verdict, float) else verdict, **stats.get(name, {}))
                except Exception as err:
                    log.add(**row, passed=False, message=error_text(err))
                    if cuda_broken(plan.device):
                        return CUDA_FAULT
    return 0


if __name__ == "__main__":
    sys.exit("run through benchmarks/gpu_check.py")
