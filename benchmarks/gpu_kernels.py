"""Stage "kernels" of gpu_check: one adapted matrix's update path, timed.

Paths: more-triton (kernel="triton"), more-bmm, more-reference, and PEFT LoRA (on a one-Linear module, its
update path lora_B(lora_A(x)) * scaling) at equal trainable parameters (r = params / (in + out)) and at equal
rank (r = nblocks * blk_r). Passes: forward, and forward + backward (gradients of x and of the adapter's
weights). CUDA events around each run, L2 flushed before each, median and IQR of plan.repeats runs, each run
queued behind a GPU sleep so that the events time the GPU's work (more.dispatch.gpu_times); `host_ms` is the
median time the host takes to issue one run. Where host_ms exceeds median_ms, an eager caller at that size waits
on Python and launches, not on the GPU (a full model's own matmuls usually hide it).
Also the device-to-device copy bandwidth, the yardstick of the bandwidth fractions in the summary.

Bytes each pass must move at the least (the byte formula of the summary; e = element size, T tokens,
P = trainable parameters, kr = nblocks * blk_r): forward e*(T*in + T*out + T*kr + P) (read x, write y and
h, read the weights); forward + backward adds e*(T*out + T*in + T*kr + T*in + 2P) (read dy, x and h,
write dx, read the weights and write their gradients): three passes over the activations.
"""
from __future__ import annotations

import sys

import torch
from torch import nn

from gpu_common import CUDA_FAULT, CsvLog, Deadline, Plan, Timer, cuda_broken, error_text, median_iqr, torch_dtype

COLUMNS = ["shape", "in_features", "out_features", "tokens", "nblocks", "blk_r", "dtype", "path", "rank", "pass",
           "median_ms", "iqr_ms", "host_ms", "repeats", "bytes", "gbps", "message"]


def forward_bytes(e: int, tokens: int, in_f: int, out_f: int, kr: int, params: int) -> int:
    return e * (tokens * (in_f + out_f + kr) + params)


def train_bytes(e: int, tokens: int, in_f: int, out_f: int, kr: int, params: int) -> int:
    return forward_bytes(e, tokens, in_f, out_f, kr, params) + e * (tokens * (out_f + 2 * in_f + kr) + 2 * params)


class OneLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.proj = nn.Linear(in_features, out_features, bias=False)

    def forward(self, x):
        return self.proj(x)


def lora_update(in_f: int, out_f: int, rank: int, plan: Plan, dtype: torch.dtype):
    """PEFT LoRA's update path on one Linear, and its trainable tensors."""
    import peft

    with torch.device(plan.device):
        model = peft.get_peft_model(OneLinear(in_f, out_f), peft.LoraConfig(r=rank, lora_alpha=rank,
                                                                            target_modules=["proj"]))
    model.to(plan.device, dtype)
    layer = model.base_model.model.proj
    a, b, scale = layer.lora_A["default"], layer.lora_B["default"], layer.scaling["default"]
    nn.init.normal_(b.weight)
    return (lambda x: b(a(x)) * scale), [a.weight, b.weight]


def more_update(path: str, w1, w2, out_f: int):
    from more.ops import monarch_kernel

    multiply = monarch_kernel(path.removeprefix("more-"))
    return (lambda x: multiply(x, w1, w2, out_f)), [w1, w2]


def copy_bandwidth(plan: Plan, log: CsvLog, timer: Timer) -> None:
    src = torch.empty(plan.copy_bytes, dtype=torch.uint8, device=plan.device)
    dst = torch.empty_like(src)
    ms, iqr = timer(lambda: dst.copy_(src), gpu_time=True)
    log.add(path="device-copy", **{"pass": "copy"}, median_ms=ms, iqr_ms=iqr, repeats=plan.repeats,
            bytes=2 * plan.copy_bytes, gbps=2 * plan.copy_bytes / (ms * 1e6))


def run(plan: Plan, out, deadline: Deadline, use_triton: bool = True) -> int:
    import more.dispatch as dispatch
    from more.dispatch import host_times
    from more.shapes import monarch_shape

    log = CsvLog(out / "kernels.csv", COLUMNS)
    timer = Timer(plan)
    dtype = torch_dtype(plan.dtype)
    try:
        copy_bandwidth(plan, log, timer)
    except Exception as err:
        log.add(path="device-copy", message=error_text(err))
    triton_missing = None if dispatch.triton_kernels() is not None else "skipped: triton is not installed"
    if not use_triton:
        triton_missing = "skipped: the smoke stage hit a CUDA fault in the Triton kernels"
    for in_f, out_f, tokens, k, r in plan.bench:
        shape = monarch_shape(in_f, out_f, r, k)
        where = dict(shape=f"{in_f}x{out_f}", in_features=in_f, out_features=out_f, tokens=tokens, nblocks=k,
                     blk_r=r, dtype=plan.dtype)
        equal_params = max(1, round(shape.trainable_params / (in_f + out_f)))
        paths = [("more-triton", None), ("more-bmm", None), ("more-reference", None),
                 ("lora-equal-params", equal_params), ("lora-equal-rank", k * r)]
        gen = torch.Generator(device=plan.device).manual_seed(0)
        x = torch.randn(tokens, in_f, device=plan.device, dtype=dtype, generator=gen).requires_grad_()
        dy = torch.randn(tokens, out_f, device=plan.device, dtype=dtype, generator=gen)
        w1 = torch.randn(shape.w1_shape, device=plan.device, dtype=dtype, generator=gen).requires_grad_()
        w2 = torch.randn(shape.w2_shape, device=plan.device, dtype=dtype, generator=gen).requires_grad_()
        e = x.element_size()
        for path, rank in paths:
            row = dict(where, path=path, rank=rank or "")
            if deadline.passed():
                log.add(**row, message="skipped: the stage's time limit")
                continue
            if path == "more-triton" and triton_missing:
                log.add(**row, message=triton_missing)
                continue
            print(f"kernels {where['shape']} T{tokens} k{k} r{r} {path}", flush=True)
            try:
                fn, weights = lora_update(in_f, out_f, rank, plan, dtype) if rank else more_update(path, w1, w2, out_f)
                inputs = [x, *weights]
                params = sum(w.numel() for w in weights)
                for name, step, nbytes in (
                    ("forward", lambda: fn(x), forward_bytes(e, tokens, in_f, out_f, rank or k * r, params)),
                    ("forward_backward", lambda: torch.autograd.grad(fn(x), inputs, dy),
                     train_bytes(e, tokens, in_f, out_f, rank or k * r, params)),
                ):
                    ms, iqr = timer(step, gpu_time=True)
                    host_ms = median_iqr(host_times(step, plan.repeats))[0]
                    log.add(**row, **{"pass": name}, median_ms=ms, iqr_ms=iqr, host_ms=host_ms, repeats=plan.repeats,
                            bytes=nbytes, gbps=nbytes / (ms * 1e6))
            except Exception as err:
                log.add(**row, message=error_text(err))
                if cuda_broken(plan.device):
                    return CUDA_FAULT
    return 0


if __name__ == "__main__":
    sys.exit("run through benchmarks/gpu_check.py")
