"""GPU benchmark of the MoRe kernels: one prepared script, about 5 minutes on an H100.

    python benchmarks/gpu_bench.py --out results/kernels            # on a CUDA machine
    python benchmarks/gpu_bench.py --out /tmp/check --dry-run       # tiny, on the CPU: checks the script

What it measures (bf16, CUDA events, median and IQR of --repeats runs after --warmup runs):

1. The device's copy bandwidth: a device-to-device copy of 1 GiB (bytes moved = 2 x size).
2. One adapted layer's update path (the adapter alone, as in benchmarks/test_adapter_speed.py), forward and
   forward + backward (grads of x and of the adapter's weights), for every shape x tokens x blk_r x nblocks,
   along five paths: more-triton (kernel="triton"), more-bmm (kernel="bmm"), more-reference, and a PEFT
   LoRA on a one-Linear module with the same trainable parameters (r = trainable / (in + out)) and with
   the same rank (r = nblocks * blk_r). At the paper default (nblocks 4, blk_r 4) also the whole layer,
   frozen base GEMM included. Before timing, the Triton output is checked against the reference.
3. A training step (forward, backward, AdamW) of SmolLM2-135M and of the LLaMA-7B architecture with random
   weights: MoRe (nblocks 4, blk_r 4, kernel="auto") against LoRA r=32 on the same q, k, v projections:
   step time and peak memory (torch.cuda.max_memory_allocated after a reset).

Outputs in --out: measurements.csv (tidy: one row per measurement, columns gpu, shape, in_features,
out_features, tokens, blk_r, nblocks, path, metric, value, unit, note, error; a failed measurement is a row
with metric "error" and the message), summary.csv (the goal ratios), dispatch.csv (what kernel="auto"
chose per shape), gpu_bench.png.

Goal ratios (summary.csv):
- speedup_triton_vs_bmm: bmm time / Triton time, forward + backward, at the paper default (nblocks 4, blk_r 4);
- more_over_lora_equal_params: MoRe time / LoRA time at equal trainable parameters (Triton and bmm paths);
- bandwidth_fraction: achieved forward bandwidth / copy bandwidth, with the bytes the forward must move:
  bytes = element_size * (tokens * in + k*r*p + k*s*r + tokens * out)   (read x, w1, w2; write y)
  and, for forward + backward, bytes = element_size * (2 * tokens * (in + out) + tokens * in + 3 * k*r*(p+s))
  (forward as above, backward reads dy and x and writes dx, reads w1 and w2 and writes their gradients).
"""
from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import more  # noqa: E402  (registers MoRe with PEFT)
from more.ops import monarch_kernel, monarch_reference  # noqa: E402

PAPER_NBLOCKS, PAPER_BLK_R = 4, 4
LORA_RANK_FOR_MODELS = 32
COLUMNS = ["gpu", "shape", "in_features", "out_features", "tokens", "blk_r", "nblocks", "path", "metric", "value",
           "unit", "note", "error"]


@dataclass
class Plan:
    """Everything one run measures; `full()` is the GPU run, `dry()` a tiny CPU check of the script."""

    shapes: list[tuple[int, int]]
    tokens: list[int]
    blk_rs: list[int]
    nblocks: list[int]
    dtype: torch.dtype
    device: str
    repeats: int
    warmup: int
    copy_bytes: int
    models: dict = field(default_factory=dict)  # name -> dict(batch, seq, config or None)
    model_steps: int = 10
    model_warmup: int = 3

    @staticmethod
    def full(repeats: int) -> "Plan":
        return Plan(
            shapes=[(768, 768), (1024, 1024), (4096, 4096), (4096, 11008)], tokens=[4096, 16384], blk_rs=[4, 8, 16],
            nblocks=[4, 16], dtype=torch.bfloat16, device="cuda", repeats=repeats, warmup=5, copy_bytes=1 << 30,
            models={"smollm2": dict(batch=8, seq=512, config=None), "llama-7b": dict(batch=1, seq=2048, config=None)},
        )

    @staticmethod
    def dry() -> "Plan":
        tiny = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=256)
        return Plan(
            shapes=[(64, 48)], tokens=[32], blk_rs=[4], nblocks=[4], dtype=torch.float32, device="cpu", repeats=3,
            warmup=1, copy_bytes=1 << 20, models={"tiny-llama": dict(batch=2, seq=16, config=tiny)},
            model_steps=2, model_warmup=1,
        )

    def layer_configs(self) -> list[tuple]:
        """(shape, tokens, blk_r, nblocks), the paper default first so that a time limit cuts the rest."""
        configs = [(shape, tokens, r, k) for shape in self.shapes for tokens in self.tokens
                   for r in self.blk_rs for k in self.nblocks]
        return sorted(configs, key=lambda c: (c[2:] != (PAPER_BLK_R, PAPER_NBLOCKS)))


class Recorder:
    """Collects tidy rows; a measurement that raises becomes an error row and the run goes on."""

    def __init__(self, gpu: str):
        self.gpu = gpu
        self.rows: list[dict] = []

    def add(self, metric: str, value: float, unit: str, *, shape="", in_features="", out_features="", tokens="",
            blk_r="", nblocks="", path="", note="", error=""):
        self.rows.append(dict(gpu=self.gpu, shape=shape, in_features=in_features, out_features=out_features,
                              tokens=tokens, blk_r=blk_r, nblocks=nblocks, path=path, metric=metric, value=value,
                              unit=unit, note=note, error=error))

    def guarded(self, fn, **where) -> bool:
        try:
            fn()
            return True
        except Exception as err:  # recorded, not raised: one failure must not cost the whole GPU session
            message = f"{type(err).__name__}: {err}".replace("\n", " ")[:500]
            print(f"  failed {where}: {message}", file=sys.stderr)
            traceback.print_exc(limit=3)
            self.add("error", math.nan, "", error=message, **where)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return False


# ---------------------------------------------------------------------------------------------------
# Timing


def median_ms(fn, plan: Plan, repeats: int | None = None, warmup: int | None = None) -> tuple[float, float]:
    """(median, IQR) in milliseconds; on CUDA one pair of events per run, one synchronisation at the end."""
    repeats = repeats or plan.repeats
    for _ in range(plan.warmup if warmup is None else warmup):
        fn()
    if plan.device == "cuda":
        torch.cuda.synchronize()
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        times = [start.elapsed_time(end) for start, end in events]
    else:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    quartiles = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return statistics.median(times), quartiles[2] - quartiles[0]


def copy_bandwidth(plan: Plan, rec: Recorder) -> float:
    src = torch.empty(plan.copy_bytes // 2, dtype=torch.bfloat16, device=plan.device)
    dst = torch.empty_like(src)
    ms, iqr = median_ms(lambda: dst.copy_(src), plan, repeats=max(10, plan.repeats // 2))
    gbps = 2 * plan.copy_bytes / (ms * 1e-3) / 1e9  # read + write
    rec.add("copy_bandwidth", gbps, "GB/s", path="device-copy", note=f"{plan.copy_bytes} bytes, median {ms:.4f} ms")
    return gbps


# ---------------------------------------------------------------------------------------------------
# One adapted layer


class OneLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.proj = nn.Linear(in_features, out_features, bias=False)

    def forward(self, x):
        return self.proj(x)


def adapted_layer(in_features: int, out_features: int, plan: Plan, config):
    """A one-Linear module adapted through PEFT, built on the device in the plan's dtype; its `proj` layer."""
    import peft

    with torch.device(plan.device):  # random init of the frozen base on the GPU, not on the host
        model = peft.get_peft_model(OneLinear(in_features, out_features), config)
    model.to(plan.device, plan.dtype)  # PEFT keeps adapters in fp32 otherwise
    return model.base_model.model.proj


def update_fn(layer, path: str, out_features: int):
    """The adapter's own update, without the frozen base layer, and the tensors it trains."""
    if path.startswith("lora"):
        a, b = layer.lora_A["default"], layer.lora_B["default"]
        scale = layer.scaling["default"]
        return (lambda x: b(a(x)) * scale), [a.weight, b.weight]
    w1, w2 = layer.more_blkdiag1["default"], layer.more_blkdiag2["default"]
    multiply = monarch_reference if path == "more-reference" else monarch_kernel(path.removeprefix("more-"))
    return (lambda x: multiply(x, w1, w2, out_features)), [w1, w2]


def forward_bytes(tokens, in_features, out_features, nblocks, blk_r, element_size) -> int:
    shape = more.monarch_shape(in_features, out_features, blk_r, nblocks)
    return element_size * (tokens * in_features + shape.trainable_params + tokens * out_features)


def train_bytes(tokens, in_features, out_features, nblocks, blk_r, element_size) -> int:
    shape = more.monarch_shape(in_features, out_features, blk_r, nblocks)
    forward = tokens * (in_features + out_features)  # read x, write y
    backward = tokens * (out_features + 2 * in_features)  # read dy and x, write dx
    return element_size * (forward + backward + 3 * shape.trainable_params)  # w1, w2 read twice, grads written


def measure_layer(plan: Plan, rec: Recorder, shape, tokens, blk_r, nblocks, done_lora: set):
    import peft

    in_features, out_features = shape
    where = dict(shape=f"{in_features}x{out_features}", in_features=in_features, out_features=out_features,
                 tokens=tokens, blk_r=blk_r, nblocks=nblocks)
    monarch = more.monarch_shape(in_features, out_features, blk_r, nblocks)
    equal_params_rank = max(1, round(monarch.trainable_params / (in_features + out_features)))
    x = torch.randn(tokens, in_features, device=plan.device, dtype=plan.dtype, requires_grad=True)
    dy = torch.randn(tokens, out_features, device=plan.device, dtype=plan.dtype)
    more_config = more.MoReConfig(nblocks=nblocks, blk_r=blk_r, target_modules=["proj"], init_weights=False)
    more_layer = adapted_layer(in_features, out_features, plan, more_config)

    def check_triton():
        fn, _ = update_fn(more_layer, "more-triton", out_features)
        ref, _ = update_fn(more_layer, "more-reference", out_features)
        with torch.no_grad():
            got, want = fn(x).float(), ref(x).float()
        rec.add("max_rel_error_vs_reference", ((got - want).abs().max() / want.abs().max()).item(), "",
                path="more-triton", **where)

    rec.guarded(check_triton, path="more-triton", **where)

    paths = ["more-triton", "more-bmm", "more-reference", f"lora-equal-params-r{equal_params_rank}",
             f"lora-equal-rank-r{nblocks * blk_r}"]
    for path in paths:
        rank = int(path.rsplit("-r", 1)[1]) if path.startswith("lora") else None
        path_where = dict(where, blk_r="", nblocks="") if rank else where  # LoRA does not depend on them
        if rank and (shape, tokens, rank) in done_lora:
            continue

        def run(path=path, rank=rank, path_where=path_where):
            if rank:
                layer = adapted_layer(in_features, out_features, plan,
                                      peft.LoraConfig(r=rank, lora_alpha=rank, target_modules=["proj"]))
            else:
                layer = more_layer
                layer.more_kernel["default"] = path.removeprefix("more-")  # for the whole-layer timing
            fn, weights = update_fn(layer, path, out_features)
            inputs, element_size = [x, *weights], x.element_size()
            fwd_ms, fwd_iqr = median_ms(lambda: fn(x), plan)
            step_ms, step_iqr = median_ms(lambda: torch.autograd.grad(fn(x), inputs, dy), plan)
            note = f"lora rank {rank}" if rank else ""
            rec.add("time_fwd_ms", fwd_ms, "ms", path=path, note=note, **path_where)
            rec.add("time_fwd_iqr_ms", fwd_iqr, "ms", path=path, note=note, **path_where)
            rec.add("time_fwd_bwd_ms", step_ms, "ms", path=path, note=note, **path_where)
            rec.add("time_fwd_bwd_iqr_ms", step_iqr, "ms", path=path, note=note, **path_where)
            if not rank:
                fwd_bytes = forward_bytes(tokens, in_features, out_features, nblocks, blk_r, element_size)
                rec.add("achieved_bandwidth_fwd", fwd_bytes / (fwd_ms * 1e-3) / 1e9, "GB/s", path=path, **where)
                step_bytes = train_bytes(tokens, in_features, out_features, nblocks, blk_r, element_size)
                rec.add("achieved_bandwidth_fwd_bwd", step_bytes / (step_ms * 1e-3) / 1e9, "GB/s", path=path, **where)
            if (blk_r, nblocks) == (PAPER_BLK_R, PAPER_NBLOCKS) and path != "more-reference":
                # the whole adapted layer, frozen base GEMM included
                layer_ms, _ = median_ms(lambda: torch.autograd.grad(layer(x), inputs, dy), plan)
                rec.add("layer_time_fwd_bwd_ms", layer_ms, "ms", path=path, note=note, **path_where)

        if rec.guarded(run, path=path, **path_where) and rank:
            done_lora.add((shape, tokens, rank))


# ---------------------------------------------------------------------------------------------------
# Training steps of whole models


def smollm2_config() -> dict:
    return dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                num_key_value_heads=3, vocab_size=49152, max_position_embeddings=2048, rms_norm_eps=1e-5,
                tie_word_embeddings=True)


def build_model(name: str, spec: dict, plan: Plan) -> tuple[nn.Module, str]:
    """(model, note on its weights). SmolLM2 from the harness when it can, else its architecture."""
    import transformers

    if spec.get("config") is not None:
        config = transformers.LlamaConfig(**spec["config"])
        return transformers.LlamaForCausalLM(config).to(plan.device, plan.dtype), "random weights, tiny config"
    if name == "smollm2":
        try:
            from harness.models import load_model

            loaded = load_model("smollm2", head="causal_lm", device=plan.device, dtype=plan.dtype)
            return loaded.model, "pretrained weights (harness.models.load_model)"
        except Exception as err:
            print(f"  smollm2 from the harness failed ({err!r}); using its architecture with random weights")
        with torch.device(plan.device):
            model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**smollm2_config()))
        return model.to(plan.dtype), "random weights, SmolLM2-135M architecture"
    from harness.models import build_paper_scale

    try:
        model = build_paper_scale(name, device=plan.device, dtype=plan.dtype)
    except TypeError:  # an older harness without the dtype argument
        model = build_paper_scale(name, device=plan.device).to(plan.dtype)
    return model, "random weights, paper-scale architecture"


def measure_model(plan: Plan, rec: Recorder, name: str, spec: dict):
    import peft

    base, weights_note = build_model(name, spec, plan)
    batch, seq = spec["batch"], spec["seq"]
    vocab = base.config.vocab_size
    input_ids = torch.randint(0, vocab, (batch, seq), device=plan.device)
    adapters = {
        "more-auto": more.MoReConfig(nblocks=PAPER_NBLOCKS, blk_r=PAPER_BLK_R, kernel="auto", init_weights=False,
                                     target_modules=["q_proj", "k_proj", "v_proj"]),
        f"lora-r{LORA_RANK_FOR_MODELS}": peft.LoraConfig(r=LORA_RANK_FOR_MODELS, lora_alpha=LORA_RANK_FOR_MODELS,
                                                         target_modules=["q_proj", "k_proj", "v_proj"]),
    }
    for path, config in adapters.items():
        is_more = path.startswith("more")
        where = dict(shape=name, tokens=batch * seq, blk_r=PAPER_BLK_R if is_more else "",
                     nblocks=PAPER_NBLOCKS if is_more else "", path=path)

        def run(config=config, where=where):
            nonlocal base
            model = peft.get_peft_model(base, config)
            try:
                model.to(plan.dtype)
                model.train()
                trainable = [p for p in model.parameters() if p.requires_grad]
                optimizer = torch.optim.AdamW(trainable, lr=1e-4)

                def step():
                    loss = model(input_ids=input_ids, labels=input_ids).loss
                    loss.backward()
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)

                for _ in range(plan.model_warmup):  # also where kernel="auto" measures its shapes
                    step()
                if plan.device == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                ms, iqr = median_ms(step, plan, repeats=plan.model_steps, warmup=0)
                note = f"{weights_note}; batch {batch} x seq {seq}"
                rec.add("time_step_ms", ms, "ms", note=note, **where)
                rec.add("time_step_iqr_ms", iqr, "ms", note=note, **where)
                rec.add("tokens_per_s", batch * seq / (ms * 1e-3), "tokens/s", note=note, **where)
                rec.add("trainable_params", sum(p.numel() for p in trainable), "count", note=note, **where)
                if plan.device == "cuda":
                    rec.add("peak_memory_allocated_bytes", torch.cuda.max_memory_allocated(), "bytes", note=note,
                            **where)
            finally:
                base = model.unload()  # the base model back without adapters, for the next method

        rec.guarded(run, **where)
    del base
    if plan.device == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------------
# Summary and figure


def summarize(rows: list[dict]):
    """The goal ratios as a tidy table (one row per ratio and shape)."""
    import pandas as pd

    df = pd.DataFrame(rows, columns=COLUMNS)
    ok = df[(df.error == "") & (df.metric != "error")].copy()
    ok["value"] = ok["value"].astype(float)
    out = []

    def times(metric, path_prefix, **eq):
        sel = ok[(ok.metric == metric) & ok.path.str.startswith(path_prefix)]
        for col, value in eq.items():
            sel = sel[sel[col] == value]
        return sel.set_index(["shape", "tokens"])["value"]

    paper = dict(blk_r=PAPER_BLK_R, nblocks=PAPER_NBLOCKS)
    triton = times("time_fwd_bwd_ms", "more-triton", **paper)
    bmm = times("time_fwd_bwd_ms", "more-bmm", **paper)
    for key in triton.index.intersection(bmm.index):
        out.append(dict(goal="speedup_triton_vs_bmm", shape=key[0], tokens=key[1], blk_r=PAPER_BLK_R,
                        nblocks=PAPER_NBLOCKS, value=bmm[key] / triton[key], unit="x (fwd+bwd)"))

    lora = ok[(ok.metric == "time_fwd_bwd_ms") & ok.path.str.startswith("lora-equal-params")]
    lora = lora.set_index(["shape", "tokens", "path"])["value"]
    more_rows = ok[(ok.metric == "time_fwd_bwd_ms") & ok.path.isin(["more-triton", "more-bmm"])]
    for _, row in more_rows.iterrows():
        shape = more.monarch_shape(int(row.in_features), int(row.out_features), int(row.blk_r), int(row.nblocks))
        rank = max(1, round(shape.trainable_params / (shape.in_features + shape.out_features)))
        key = (row["shape"], row["tokens"], f"lora-equal-params-r{rank}")
        if key in lora.index:
            out.append(dict(goal=f"more_over_lora_equal_params:{row.path}", shape=row["shape"], tokens=row["tokens"],
                            blk_r=row.blk_r, nblocks=row.nblocks, value=row.value / lora[key], unit="ratio (fwd+bwd)"))

    copy = ok[ok.metric == "copy_bandwidth"]["value"]
    if len(copy):
        for metric in ("achieved_bandwidth_fwd", "achieved_bandwidth_fwd_bwd"):
            for _, row in ok[(ok.metric == metric) & ok.path.isin(["more-triton", "more-bmm"])].iterrows():
                out.append(dict(goal=f"{metric.replace('achieved_bandwidth', 'bandwidth_fraction')}:{row.path}",
                                shape=row["shape"], tokens=row["tokens"], blk_r=row.blk_r, nblocks=row.nblocks,
                                value=row.value / copy.iloc[0], unit="fraction of copy bandwidth"))
    return pd.DataFrame(out, columns=["goal", "shape", "tokens", "blk_r", "nblocks", "value", "unit"])


def save_figure(rows: list[dict], path: Path, gpu: str):
    """Four panels: update-path time, forward bandwidth fraction, model step time, model peak memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.DataFrame(rows, columns=COLUMNS)
    df = df[(df.error == "") & (df.metric != "error")].copy()
    df["value"] = df["value"].astype(float)
    paper = (df.blk_r == PAPER_BLK_R) & (df.nblocks == PAPER_NBLOCKS)
    fig, axes = plt.subplots(2, 2, figsize=(14, 9))

    def bars(ax, table, title, ylabel, **kwargs):
        if len(table):
            table.plot.bar(ax=ax, rot=0, **kwargs)
        ax.set_title(title)
        ax.set_ylabel(ylabel)

    step = df[(df.metric == "time_fwd_bwd_ms") & (paper | df.path.str.startswith("lora-equal-params"))]
    step = step.assign(label=step["shape"] + "\n" + step.tokens.astype(str) + " tok")
    bars(axes[0, 0], step.pivot_table(index="label", columns="path", values="value", aggfunc="first"),
         "update path, forward + backward\nMoRe nblocks 4, blk_r 4; LoRA of equal parameters", "ms (median)",
         logy=True)

    copy = df[df.metric == "copy_bandwidth"]["value"]
    bw = df[(df.metric == "achieved_bandwidth_fwd") & paper]
    if len(copy):
        bw = bw.assign(fraction=bw.value / copy.iloc[0], label=bw["shape"] + "\n" + bw.tokens.astype(str) + " tok")
        bars(axes[0, 1], bw.pivot_table(index="label", columns="path", values="fraction", aggfunc="first"),
             "forward: bytes (x, w1, w2 read; y written) / time\nas a fraction of the device copy bandwidth",
             "fraction")
        axes[0, 1].axhline(1.0, color="grey", lw=0.8, ls="--")

    models = df[df.metric == "time_step_ms"]
    bars(axes[1, 0], models.pivot_table(index="shape", columns="path", values="value", aggfunc="first"),
         "training step: MoRe (kernel auto) vs LoRA r=32 on q, k, v", "ms (median)")
    memory = df[df.metric == "peak_memory_allocated_bytes"].assign(gib=lambda d: d.value / 2**30)
    bars(axes[1, 1], memory.pivot_table(index="shape", columns="path", values="gib", aggfunc="first"),
         "training step: peak memory allocated", "GiB")

    fig.suptitle(f"MoRe kernels on {gpu}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/kernels"), help="folder for the CSVs and figure")
    parser.add_argument("--repeats", type=int, default=50, help="timed runs per measurement (median, IQR)")
    parser.add_argument("--time-budget-s", type=float, default=330.0,
                        help="layer measurements stop (recorded as skipped) so that the whole run fits this budget")
    parser.add_argument("--model-reserve-s", type=float, default=100.0, help="seconds kept for the model steps")
    parser.add_argument("--skip-models", action="store_true", help="only the layer measurements")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU, to check the script")
    return parser.parse_args(argv)


def environment(plan: Plan) -> str:
    if plan.device == "cuda":
        return torch.cuda.get_device_name()
    return f"cpu ({platform.processor() or platform.machine()}, dry run)"


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_bench: no CUDA device on this machine; nothing measured. "
              "Run it on a GPU machine, or with --dry-run to check the script here.", file=sys.stderr)
        return 2
    plan = Plan.dry() if args.dry_run else Plan.full(args.repeats)
    start = time.monotonic()
    gpu = environment(plan)
    rec = Recorder(gpu)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"gpu_bench on {gpu}: torch {torch.__version__}, writing to {args.out}")
    try:
        import triton

        rec.add("triton_version", math.nan, "", note=triton.__version__)
    except ImportError:
        rec.add("triton_version", math.nan, "", error="triton is not installed")
    rec.add("torch_version", math.nan, "", note=torch.__version__)

    rec.guarded(lambda: copy_bandwidth(plan, rec), path="device-copy")
    layer_deadline = start + args.time_budget_s - (0 if args.skip_models else args.model_reserve_s)
    done_lora: set = set()
    for shape, tokens, blk_r, nblocks in plan.layer_configs():
        where = dict(shape=f"{shape[0]}x{shape[1]}", in_features=shape[0], out_features=shape[1], tokens=tokens,
                     blk_r=blk_r, nblocks=nblocks)
        if time.monotonic() > layer_deadline:
            rec.add("skipped", math.nan, "", error="time budget", **where)
            continue
        print(f"  layer {where['shape']} tokens {tokens} blk_r {blk_r} nblocks {nblocks} "
              f"({time.monotonic() - start:.0f} s)")
        measure_layer(plan, rec, shape, tokens, blk_r, nblocks, done_lora)

    if not args.skip_models:
        for name, spec in plan.models.items():
            if time.monotonic() > start + args.time_budget_s:
                rec.add("skipped", math.nan, "", shape=name, error="time budget")
                continue
            print(f"  model {name} ({time.monotonic() - start:.0f} s)")
            rec.guarded(lambda: measure_model(plan, rec, name, spec), shape=name)

    rec.add("wall_time_s", time.monotonic() - start, "s", path="gpu_bench")
    write_outputs(rec, args.out, gpu)
    print(f"gpu_bench done in {time.monotonic() - start:.0f} s")
    return 0


def write_outputs(rec: Recorder, out: Path, gpu: str):
    import pandas as pd

    pd.DataFrame(rec.rows, columns=COLUMNS).to_csv(out / "measurements.csv", index=False)
    summary = summarize(rec.rows)
    summary.to_csv(out / "summary.csv", index=False)
    from more.dispatch import dispatch_table

    pd.DataFrame(dispatch_table()).to_csv(out / "dispatch.csv", index=False)
    try:
        save_figure(rec.rows, out / "gpu_bench.png", gpu)
    except Exception as err:
        print(f"  figure failed: {err!r}", file=sys.stderr)
    if len(summary):
        print(summary.to_string(index=False, float_format=lambda v: f"{v:.3g}"))


if __name__ == "__main__":
    sys.exit(main())
