"""What every stage of `benchmarks/gpu_check.py` shares: the plan (full on a GPU, tiny for --dry-run), CSV
logs that write each row as soon as it is measured, and timing with CUDA events and a flushed L2.

Nothing here imports the project at module level beyond torch, so that the driver can report what is
missing before anything else fails.
"""
from __future__ import annotations

import csv
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the project from the working tree, with or without PYTHONPATH=.

PAPER_NBLOCKS, PAPER_BLK_R = 4, 4
LORA_RANK_FOR_MODELS = 32
# The paper's Table 1 compares with LLM-Adapters' LoRA r=32 on LLaMA-7B, which targets q, k, v, up and down;
# MoRe there adapts q, k, v.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "up_proj", "down_proj")
MORE_TARGETS = ("q_proj", "k_proj", "v_proj")

# The files one run writes into its folder (at most 8: the device tool brings back 8).
FILES = ("run.csv", "smoke.csv", "kernels.csv", "training.csv", "dispatch.csv", "summary.md", "gpu_check.png",
         "log.txt")

TINY_LLAMA = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, vocab_size=256, max_position_embeddings=64, tie_word_embeddings=False)
LLAMA_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5,
                tie_word_embeddings=False)  # the published LLaMA-1 7B, as harness/models.py's llama-7b@paper
SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048, rms_norm_eps=1e-5,
                    tie_word_embeddings=True)


@dataclass
class Plan:
    """Everything one run measures. `full()` is the GPU run; `dry()` the same plan at tiny sizes on the CPU."""

    dry_run: bool
    device: str
    # smoke: (in, out, nblocks, blk_r, dtype name) at smoke_tokens
    smoke: list
    smoke_tokens: int
    # kernel benchmark: (in, out, tokens, nblocks, blk_r); bf16 unless dry
    bench: list
    dtype: str
    repeats: int
    warmup: int
    flush_bytes: int  # written between timed runs, larger than L2
    copy_bytes: int
    # training: name -> dict(config, batch, seq)
    models: dict = field(default_factory=dict)
    steps: int = 10
    model_warmup: int = 3
    # seconds: each stage's own limit; the whole run's limit
    timeouts: dict = field(default_factory=dict)
    budget_s: float = 450.0

    @staticmethod
    def full() -> "Plan":
        shapes = [(4096, 4096), (4096, 11008), (11008, 4096)]
        # (nblocks, blk_r): the paper default first; k*r = 16 and 64 run the expanded second factor, 128 per block
        factors = [(4, 4), (16, 4), (4, 32)]
        return Plan(
            dry_run=False, device="cuda",
            smoke=[(i, o, k, r, "bfloat16") for k, r in factors for i, o in shapes] + [(4096, 4096, 4, 4, "float32")],
            smoke_tokens=16384,
            bench=[(4096, 4096, 16384, 4, 4), (4096, 11008, 16384, 4, 4), (11008, 4096, 16384, 4, 4),
                   (4096, 4096, 4096, 4, 4)] + [(i, o, 16384, k, r) for k, r in factors[1:] for i, o in shapes[:2]],
            dtype="bfloat16", repeats=30, warmup=3, flush_bytes=256 << 20, copy_bytes=1 << 30,
            models={"llama-7b@paper": dict(config=LLAMA_7B, batch=1, seq=2048),
                    "smollm2-135m": dict(config=SMOLLM2_135M, batch=8, seq=512)},
            timeouts=dict(smoke=130, kernels=140, training=150), budget_s=450.0,
        )

    @staticmethod
    def dry() -> "Plan":
        return Plan(
            dry_run=True, device="cpu",
            smoke=[(64, 48, 4, 4, "bfloat16"), (64, 48, 16, 8, "bfloat16"), (64, 48, 4, 4, "float32")],
            smoke_tokens=40,
            bench=[(64, 48, 40, 4, 4)], dtype="float32", repeats=3, warmup=1, flush_bytes=1 << 20,
            copy_bytes=1 << 20,
            models={"llama-7b@paper": dict(config=TINY_LLAMA, batch=2, seq=16),
                    "smollm2-135m": dict(config=dict(TINY_LLAMA, num_key_value_heads=2, tie_word_embeddings=True),
                                         batch=2, seq=16)},
            steps=2, model_warmup=1, timeouts=dict(smoke=300, kernels=300, training=300), budget_s=900.0,
        )


class CsvLog:
    """Appends rows to one CSV, flushed at once, so that a crash or a timeout loses nothing measured."""

    def __init__(self, path: Path, columns: list[str]):
        self.path, self.columns = path, columns
        new = not path.exists() or path.stat().st_size == 0
        self._file = open(path, "a", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=columns, extrasaction="ignore")
        if new:
            self._writer.writeheader()
            self._file.flush()

    def add(self, **row) -> None:
        self._writer.writerow({k: _cell(v) for k, v in row.items()})
        self._file.flush()


def _cell(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    return value


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def error_text(err: BaseException) -> str:
    traceback.print_exc(limit=4)
    return f"{type(err).__name__}: {err}".replace("\n", " ")[:400]


class Timer:
    """(median, IQR) in ms of a function. On CUDA one pair of events around each run, `flush_bytes` written
    before each so that no run finds the previous one's data in L2, and with `gpu_time` each run queued behind a
    sleep so that the events time the GPU's work alone (more.dispatch.gpu_times): the kernel stage's yardstick.
    Without it the events also count the time the host takes to issue the run, as a training step does."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.cuda = plan.device == "cuda"
        self.flush = torch.empty(plan.flush_bytes // 4, dtype=torch.float32, device=plan.device) if self.cuda else None

    def __call__(self, fn, repeats: int | None = None, warmup: int | None = None,
                 gpu_time: bool = False) -> tuple[float, float]:
        from more.dispatch import gpu_times, host_times

        repeats = repeats or self.plan.repeats
        for _ in range(self.plan.warmup if warmup is None else warmup):
            fn()
        if self.cuda:
            times = gpu_times(fn, repeats, before=self.flush.zero_, hold=gpu_time)
        else:
            times = host_times(fn, repeats)
        return median_iqr(times)


def median_iqr(times: list[float]) -> tuple[float, float]:
    """(median, interquartile range)."""
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return statistics.median(times), q[2] - q[0]


class Deadline:
    """The stage's own soft limit: it stops measuring (and says so) before the driver has to kill it."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def passed(self) -> bool:
        return time.monotonic() > self.end


CUDA_FAULT = 3  # a stage's exit code after a CUDA fault: the driver may start it again, to resume


def cuda_broken(device: str) -> bool:
    """After an exception: whether the CUDA context is gone (an illegal access poisons every later call)."""
    if device != "cuda":
        return False
    try:
        torch.cuda.synchronize()
        return False
    except Exception:
        return True


def torch_dtype(name: str) -> torch.dtype:
    return getattr(torch, name)
