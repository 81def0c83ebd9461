"""Stage "training" of gpu_check: whole training steps (forward, backward, AdamW) of decoder models with
random weights, in the plan's dtype.

- llama-7b@paper: the published LLaMA-7B architecture (harness/models.py's `llama-7b@paper`), built here from
  its config dict with transformers directly, so that the device's transformers version matters little.
  MoRe nblocks 4, blk_r 4 on q, k, v (3.1M parameters) with kernel auto, bmm and triton, against LoRA r=32 on
  q, k, v, up, down (LLM-Adapters' setting, which the paper's Table 1 compares with: 56.1M parameters).
- smollm2-135m: SmolLM2-135M's architecture, the same adapters. Random weights: a step's time and memory do
  not depend on the weights' values, and the embedded model package is not needed on the GPU machine.

One row per (model, adapter): median and IQR step time, tokens/s, trainable parameters, peak memory
allocated (torch.cuda.max_memory_allocated over the timed steps).
"""
from __future__ import annotations

import sys

import torch

from gpu_common import (CUDA_FAULT, LORA_RANK_FOR_MODELS, LORA_TARGETS, MORE_TARGETS, PAPER_BLK_R, PAPER_NBLOCKS,
                        CsvLog, Deadline, Plan, Timer, cuda_broken, error_text, torch_dtype)

COLUMNS = ["model", "path", "targets", "trainable_params", "batch", "seq", "dtype", "median_ms", "iqr_ms", "steps",
           "tokens_per_s", "peak_memory_gib", "message"]


def build(config: dict, plan: Plan, dtype: torch.dtype):
    """A LlamaForCausalLM with random weights, created directly in `dtype` on the plan's device."""
    import transformers

    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(plan.device):
            model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config))
    finally:
        torch.set_default_dtype(default)
    return model.to(dtype)


def adapters(use_triton: bool) -> dict:
    import peft

    import more

    kernels = ["auto", "bmm"] + (["triton"] if use_triton else [])
    found = {f"more-{kernel}": more.MoReConfig(nblocks=PAPER_NBLOCKS, blk_r=PAPER_BLK_R, kernel=kernel, init_weights=False,
                                                target_modules=list(MORE_TARGETS)) for kernel in kernels}
    found[f"lora-r{LORA_RANK_FOR_MODELS}"] = peft.LoraConfig(r=LORA_RANK_FOR_MODELS, lora_alpha=LORA_RANK_FOR_MODELS,
                                                               target_modules=list(LORA_TARGETS))
    return found


def run(plan: Plan, out, deadline: Deadline, use_triton: bool = True) -> int:
    import peft

    log = CsvLog(out / "training.csv", COLUMNS)
    timer = Timer(plan)
    dtype = torch_dtype(plan.dtype)
    for name, spec in plan.models.items():
        if deadline.passed():
            log.add(model=name, message="skipped: the stage's time limit")
            continue
        print(f"training: building {name}", flush=True)
        try:
            base = build(spec["config"], plan, dtype)
        except Exception as err:
            log.add(model=name, message="build: " + error_text(err))
            if cuda_broken(plan.device):
                return CUDA_FAULT
            continue
        batch, seq = spec["batch"], spec["seq"]
        input_ids = torch.randint(0, spec["config"]["vocab_size"], (batch, seq), device=plan.device)
        for path, config in adapters(use_triton).items():
            targets = MORE_TARGETS if path.startswith("more") else LORA_TARGETS
            row = dict(model=name, path=path, targets=",".join(targets), batch=batch, seq=seq,
                       dtype=plan.dtype)
            if deadline.passed():
                log.add(**row, message="skipped: the stage's time limit")
                continue
            print(f"training {name} {path}", flush=True)
            model = None
            try:
                model = peft.get_peft_model(base, config)
                model.to(dtype)  # PEFT keeps adapter weights in fp32 otherwise
                model.train()
                trainable = [p for p in model.parameters() if p.requires_grad]
                optimizer = torch.optim.AdamW(trainable, lr=1e-4)

                def step():
                    model(input_ids=input_ids, labels=input_ids).loss.backward()
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)

                for _ in range(plan.model_warmup):  # kernel="auto" measures its shapes here
                    step()
                if plan.device == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                ms, iqr = timer(step, repeats=plan.steps, warmup=0)
                peak = torch.cuda.max_memory_allocated() / 2**30 if plan.device == "cuda" else ""
                log.add(**row, trainable_params=sum(p.numel() for p in trainable), median_ms=ms, iqr_ms=iqr,
                        steps=plan.steps, tokens_per_s=batch * seq / (ms * 1e-3), peak_memory_gib=peak)
            except Exception as err:
                log.add(**row, message=error_text(err))
                if cuda_broken(plan.device):
                    return CUDA_FAULT
            finally:
                try:
                    base = model.unload() if model is not None else base  # without adapters, for the next one
                except Exception as err:
                    print(f"training: unloading {path} failed ({err!r})", flush=True)
        del base
        if plan.device == "cuda":
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit("run through benchmarks/gpu_check.py")
