"""Measurements hold against closed forms and against each other, on the real MiniLM and on
paper-scale configs built on the meta device. No timed assertions: speed claims live in benchmarks."""
import json
import math
import os
import subprocess
import sys
import time

import peft
import pytest
import torch
from transformers import AutoModel

from harness.adapters import AdapterSpec
from harness.measure import env, flops, memory, params, timing
from harness.measure.records import value_of
from harness.models import build_paper_scale
from harness.prepare import default_targets
from more import monarch_shape

BATCH, SEQ = 2, 16
TOKENS = BATCH * SEQ


@pytest.fixture
def batch():
    ids = torch.randint(1000, 20000, (BATCH, SEQ))
    return ids, torch.ones_like(ids)


def minilm_with(minilm_dir, adapter: str):
    model = AutoModel.from_pretrained(minilm_dir, attn_implementation="eager")
    config = AdapterSpec.parse(adapter).peft_config(target_modules=["query", "key", "value"])
    return peft.get_peft_model(model, config)


def per_module(rows, metric):
    return {r.scope: r.value for r in rows if r.metric == metric and r.scope}


@pytest.mark.parametrize("adapter,per_layer", [
    ("more:nblocks=4,blk_r=4", monarch_shape(384, 384, 4, 4).forward_flops(TOKENS)),
    ("more:nblocks=16,blk_r=2", monarch_shape(384, 384, 2, 16).forward_flops(TOKENS)),
    ("lora:r=8", 2 * TOKENS * 8 * (384 + 384)),
])
def test_adapter_flops_equal_closed_form(minilm_dir, batch, adapter, per_layer):
    model = minilm_with(minilm_dir, adapter).eval()
    ids, mask = batch
    fv = flops.fvcore_forward_flops(model, ids, mask)
    with torch.no_grad():
        fc = flops.counter_flops(model, lambda: model(input_ids=ids, attention_mask=mask).last_hidden_state.sum(), train=False)
    for rows, metric in ((fv, "adapter_flops_forward_fvcore"), (fc, "adapter_flops_forward")):
        modules = per_module(rows, metric)
        assert len(modules) == 18 and set(modules.values()) == {per_layer}, metric
        assert value_of(rows, metric) == 18 * per_layer
    # the closed form the study runner plans with gives the same total
    assert AdapterSpec.parse(adapter).closed_form_forward_flops([(384, 384)] * 18, TOKENS) == 18 * per_layer
    # fvcore names what it skipped instead of counting it as free
    assert {r.scope for r in fv if r.metric == "fvcore_skipped_op_calls"} >= {"aten::softmax"}
    # the whole-model totals differ by exactly two known choices: fvcore counts layer norms (5 per
    # element) and its trace drops the unused pooler, which FlopCounterMode counts
    layer_norm = 2 * 5 * (1 + 2 * 6) * TOKENS * 384
    pooler = 2 * BATCH * 384 * 384
    assert value_of(fv, "flops_forward_fvcore") - layer_norm + pooler == value_of(fc, "flops_forward")


def test_training_step_flops_follow_the_backward_closed_form(minilm_dir, batch):
    """Backward = 2 forwards per adapter, except the input gradient of layer 0's adapters, which see
    frozen embeddings: nobody needs it and neither MoRe nor LoRA computes it."""
    ids, mask = batch
    totals = {}
    for adapter in ("more:nblocks=4,blk_r=4", "more:nblocks=4,blk_r=2", "lora:r=4"):
        model = minilm_with(minilm_dir, adapter).train()
        rows = flops.counter_flops(model, lambda: model(input_ids=ids, attention_mask=mask).last_hidden_state.pow(2).mean(), train=True)
        totals[adapter] = value_of(rows, "flops_train_step")
    # same trainable parameters, same FLOPs: the frozen model's share cancels
    assert totals["more:nblocks=4,blk_r=4"] == totals["lora:r=4"]
    forward = {r: monarch_shape(384, 384, r, 4).forward_flops(TOKENS) for r in (2, 4)}
    input_grad = {r: 2 * TOKENS * r * 384 for r in (2, 4)}
    expected = 18 * 3 * (forward[4] - forward[2]) - 3 * (input_grad[4] - input_grad[2])
    assert totals["more:nblocks=4,blk_r=4"] - totals["more:nblocks=4,blk_r=2"] == expected


@pytest.mark.parametrize("name,adapter,per_layer_matrices", [
    ("roberta-large", "more:nblocks=4,blk_r=4", [(1024, 1024)] * 3),
    ("llama-7b", "more:nblocks=4,blk_r=4", [(4096, 4096)] * 3),
    ("llama-7b", "lora:r=32", [(4096, 4096)] * 3),
    ("llama-13b", "more:nblocks=4,blk_r=8", [(5120, 5120)] * 3),
])
def test_parameter_counts_on_meta_paper_scale(name, adapter, per_layer_matrices):
    base = build_paper_scale(name)
    layers = base.config.num_hidden_layers
    total_base = sum(p.numel() for p in base.parameters())
    spec = AdapterSpec.parse(adapter)
    model = peft.get_peft_model(base, spec.peft_config(target_modules=default_targets(base)))
    rows = params.parameter_counts(model)
    expected = spec.closed_form_params(per_layer_matrices * layers)
    assert value_of(rows, "trainable_params") == value_of(rows, "adapter_params") == expected
    assert value_of(rows, "total_params") == total_base + expected
    assert math.isclose(value_of(rows, "trainable_share"), 100 * expected / (total_base + expected))
    assert value_of(rows, "adapted_modules") == 3 * layers
    # the saved adapter's size is computed from meta tensors without any weights
    size = value_of([params.adapter_file_bytes(model)], "adapter_file_bytes")
    assert 4 * expected < size < 4 * expected + 300 * 2 * 3 * layers  # fp32 data plus a JSON header entry per tensor


def test_adapter_file_size_is_what_save_pretrained_writes(minilm_dir, tmp_path):
    model = minilm_with(minilm_dir, "more:nblocks=4,blk_r=4")
    model.save_pretrained(tmp_path)
    assert value_of([params.adapter_file_bytes(model)], "adapter_file_bytes") == os.path.getsize(
        tmp_path / "adapter_model.safetensors")


def test_trainable_state_of_more_is_below_lora_of_equal_rank(minilm_dir, batch):
    """nblocks * blk_r = 16: MoRe's update reaches LoRA r=16's rank with a quarter of its state."""
    ids, mask = batch
    states = {}
    for adapter in ("more:nblocks=4,blk_r=4", "lora:r=16"):
        model = minilm_with(minilm_dir, adapter).train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
        model(input_ids=ids, attention_mask=mask).last_hidden_state.pow(2).mean().backward()
        optimizer.step()
        states[adapter] = memory.trainable_state_bytes(model, optimizer)
        # parameters, gradients and two AdamW moments, all fp32
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert states[adapter] == 4 * 4 * trainable
    assert states["more:nblocks=4,blk_r=4"] * 4 == states["lora:r=16"]


def test_saved_activations_grow_with_batch(minilm_dir):
    model = minilm_with(minilm_dir, "more:nblocks=4,blk_r=4").train()
    sizes = []
    for b in (2, 8):
        ids = torch.randint(1000, 20000, (b, 32))
        sizes.append(memory.saved_activation_bytes(model, lambda: model(input_ids=ids).last_hidden_state.sum()))
    assert sizes[1] > 3 * sizes[0]


def measure_cli(*args):
    out = subprocess.run([sys.executable, "-m", "harness", "measure", "--json", *args], capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = json.loads(out.stdout)["rows"]
    return {r["metric"]: r["value"] for r in rows if not r["scope"]}


def test_measured_memory_grows_with_batch_and_matches_the_estimate():
    """Each measurement in its own process, as trials run. Stated tolerance: the tensors a step
    allocates (measured) are within a factor 1.5 of the analytic estimate (gradients, AdamW states,
    saved activations) at batch 8 and above; a small batch's transient buffers weigh more."""
    small, large = (measure_cli("--model", "minilm", "--adapter", "more:nblocks=4,blk_r=4", "--seq-len", "128",
                                "--batch", str(b), "--what", "memory", "--threads", "2") for b in (2, 16))
    for metric in ("peak_rss_bytes", "step_rss_bytes", "peak_tensor_bytes", "estimate_activation_bytes"):
        assert large[metric] > small[metric], metric
    assert 1 / 1.5 < large["peak_tensor_bytes"] / large["estimate_step_bytes"] < 1.5
    assert math.isnan(large["peak_memory_allocated_bytes"])  # CUDA only: not measured, never 0


def test_peak_rss_sees_a_real_allocation():
    memory.reset_peak_rss()
    before = memory.peak_rss()
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    assert memory.peak_rss() - before >= 60 * 2**20
    del block


def test_timing_summaries_of_real_work():
    a, b = torch.randn(256, 256), torch.randn(256, 256)
    samples = timing.time_phases([("matmul", lambda: a @ b), ("sum", lambda: a.sum())], torch.device("cpu"), warmup=1, repeats=9)
    assert [len(v) for v in samples.values()] == [9, 9]
    rows = timing.summary_rows("time_matmul_s", samples["matmul"])
    assert value_of(rows, "time_matmul_s") > 0 and value_of(rows, "time_matmul_s_iqr") > 0
    assert value_of(rows, "time_matmul_s_rel_iqr") > 0


def test_interleaved_comparison_gives_ratios_to_the_reference():
    a = torch.randn(128, 128)
    samples = timing.interleaved({"one": lambda: a @ a, "three": lambda: a @ a @ a @ a}, torch.device("cpu"), warmup=1, rounds=7)
    assert [len(v) for v in samples.values()] == [7, 7]
    rows = {r.scope: r for r in timing.ratio_rows(samples, "one")}
    assert rows["one"].value == 1.0 and rows["three"].value > 0
    assert "per-round IQR" in rows["three"].note


def test_environment_fingerprint():
    fp = env.fingerprint()
    assert fp["torch"] == torch.__version__ and fp["peft"] and fp["transformers"]
    assert fp["torch_threads"] == torch.get_num_threads() and fp["cpu"]
    assert fp["git_commit"] is None or len(fp["git_commit"]) == 40
    assert set(fp["env"]) >= {"PYTORCH_CUDA_ALLOC_CONF", "OMP_NUM_THREADS"}
    assert "gpu" in fp  # None without CUDA


@pytest.mark.parametrize("text,match", [
    ("moore:r=4", "Unknown adapter 'moore'. Did you mean 'more'"),
    ("lora:rank=4", "Adapter 'lora' has no parameter 'rank'"),
    ("more:nblock=4", "Did you mean 'nblocks'"),
    ("lora:r", "is not key=value"),
])
def test_bad_adapter_specs(text, match):
    with pytest.raises(ValueError, match=match):
        AdapterSpec.parse(text)
