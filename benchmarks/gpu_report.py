"""The end of gpu_check: summary.md and gpu_check.png from whatever rows the stages wrote.

Reads only the CSVs of the run's folder, with the csv module; matplotlib is optional (no figure without it).
Goal ratios (the kernel's targets, bf16):
- Triton forward + backward / bmm forward + backward, nblocks 4, blk_r 4: at most 0.77 at 4096 x 4096 and
  4096 x 11008, 16,384 tokens;
- achieved bandwidth (the byte formula of gpu_kernels.py) / the measured device copy bandwidth: at least 0.6.
"""
from __future__ import annotations

from pathlib import Path

from gpu_common import PAPER_BLK_R, PAPER_NBLOCKS, read_rows

GOAL_SPEEDUP, GOAL_BANDWIDTH = 0.77, 0.6


def _f(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in row) + " |")
    return lines


def kernel_times(rows: list[dict]) -> dict:
    """(shape, tokens, nblocks, blk_r, path, pass) -> median ms, for rows that were measured."""
    times = {}
    for row in rows:
        ms = _f(row.get("median_ms"))
        if ms is not None and row["path"] != "device-copy":
            times[(row["shape"], row["tokens"], row["nblocks"], row["blk_r"], row["path"], row["pass"])] = ms
    return times


def copy_gbps(rows: list[dict]) -> float | None:
    return next((_f(r["gbps"]) for r in rows if r["path"] == "device-copy" and _f(r.get("gbps"))), None)


def goal_rows(rows: list[dict]) -> list[list]:
    times, copy = kernel_times(rows), copy_gbps(rows)
    out = []
    for key in sorted({k[:4] for k in times}):
        triton = times.get(key + ("more-triton", "forward_backward"))
        bmm = times.get(key + ("more-bmm", "forward_backward"))
        lora = times.get(key + ("lora-equal-params", "forward_backward"))
        ratio = triton / bmm if triton and bmm else ""
        paper = key[2:] == (str(PAPER_NBLOCKS), str(PAPER_BLK_R))
        verdict = "" if ratio == "" or not paper else ("met" if ratio <= GOAL_SPEEDUP else "not met")
        bandwidth = {}
        for row in rows:
            if (row["shape"], row["tokens"], row["nblocks"], row["blk_r"]) == key and _f(row.get("gbps")) and copy:
                bandwidth[(row["path"], row["pass"])] = _f(row["gbps"]) / copy
        out.append([*key, ratio, verdict, bandwidth.get(("more-triton", "forward_backward"), ""),
                    bandwidth.get(("more-bmm", "forward_backward"), ""),
                    triton / lora if triton and lora else "", bmm / lora if bmm and lora else ""])
    return out


def summary(out: Path) -> str:
    run, smoke = read_rows(out / "run.csv"), read_rows(out / "smoke.csv")
    kernels, training = read_rows(out / "kernels.csv"), read_rows(out / "training.csv")
    env = {r["name"]: r["value"] for r in run if r["kind"] == "version"}
    lines = [f"# gpu_check on {env.get('gpu', '?')}", "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in env.items() if k != "gpu"), ""]
    missing = [r["name"] + (f" ({r['detail']})" if r["detail"] else "") for r in run if r["kind"] == "missing"]
    if missing:
        lines += ["Missing: " + ", ".join(missing), ""]
    lines += ["## Stages", ""] + _table(["stage", "status", "seconds", "detail"], [
        [r["name"], r["value"], r["seconds"], r["detail"]] for r in run if r["kind"] == "stage"]) + [""]

    checked = [r for r in smoke if r.get("passed") in ("True", "False")]
    failed = [r for r in checked if r["passed"] == "False"]
    lines += ["## Smoke: every tiling and kernel variant against the float64 reference", "",
              f"{len(checked) - len(failed)} of {len(checked)} checks passed."
              + (" Failures and unchecked configurations:" if len(checked) < len(smoke) or failed else "")]
    regs = {}
    for r in checked:
        if _f(r.get("n_regs")) is not None:
            old = regs.get(r["kernel"], (0, 0))
            regs[r["kernel"]] = (max(old[0], int(_f(r["n_regs"]))), max(old[1], int(_f(r["n_spills"]) or 0)))
    if regs:
        lines += ["Most registers and spills per kernel: " + ", ".join(f"{k} {v[0]} regs / {v[1]} spills"
                                                                       for k, v in sorted(regs.items())) + "."]
    lines += [""] + _table(["shape", "k", "r", "dtype", "kernel", "tiles", "error", "message"], [
        [f"{r['in_features']}x{r['out_features']}", r["nblocks"], r["blk_r"], r["dtype"], r["kernel"], r["tiles"],
         r["error"], r["message"][:120]] for r in (failed + [r for r in smoke if r not in checked])[:30]]) + [""]

    copy = copy_gbps(kernels)
    lines += ["## Kernel benchmark (update path, median of CUDA-event timings of the GPU's work, L2 flushed)", "",
              "Each run is queued behind a GPU sleep, so that the times are the GPU's; host ms is the time Python "
              "takes to issue one run. Where it is larger, an eager caller at that size waits on the host.", "",
              f"Device copy bandwidth: {copy:.4g} GB/s." if copy else "Device copy bandwidth: not measured.", "",
              f"Goals: Triton / bmm (forward + backward) <= {GOAL_SPEEDUP} at nblocks {PAPER_NBLOCKS}, blk_r "
              f"{PAPER_BLK_R}; bandwidth fraction >= {GOAL_BANDWIDTH}.", ""]
    lines += _table(["shape", "tokens", "k", "r", "triton/bmm", "goal", "triton bw fraction", "bmm bw fraction",
                     "triton/LoRA eq. params", "bmm/LoRA eq. params"], goal_rows(kernels)) + [""]
    lines += _table(["shape", "tokens", "k", "r", "path", "rank", "pass", "median ms", "IQR ms", "host ms",
                     "message"], [
        [r["shape"], r["tokens"], r["nblocks"], r["blk_r"], r["path"], r["rank"], r["pass"], r["median_ms"],
         r["iqr_ms"], r.get("host_ms", ""), r["message"][:80]] for r in kernels]) + [""]
    lines += ["## Training steps (random weights)", ""] + _table(
        ["model", "adapter", "targets", "trainable", "batch x seq", "median ms", "IQR ms", "tokens/s", "peak GiB",
         "message"],
        [[r["model"], r["path"], r["targets"], r["trainable_params"], f"{r['batch']} x {r['seq']}", r["median_ms"],
          r["iqr_ms"], r["tokens_per_s"], r["peak_memory_gib"], r["message"][:80]] for r in training])
    return "\n".join(lines) + "\n"


def figure(out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kernels, training = read_rows(out / "kernels.csv"), read_rows(out / "training.csv")
    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    times = kernel_times(kernels)
    paper = sorted({k[:2] for k in times if k[2:4] == (str(PAPER_NBLOCKS), str(PAPER_BLK_R))})
    paths = ["more-triton", "more-bmm", "more-reference", "lora-equal-params", "lora-equal-rank"]
    for i, path in enumerate(paths):
        values = [times.get((s, t, str(PAPER_NBLOCKS), str(PAPER_BLK_R), path, "forward_backward"), 0) for s, t in paper]
        axes[0].bar([j + i * 0.16 for j in range(len(paper))], values, 0.16, label=path)
    axes[0].set_xticks(range(len(paper)), [f"{s}\n{t} tok" for s, t in paper])
    axes[0].set(title=f"update path, forward + backward (nblocks {PAPER_NBLOCKS}, blk_r {PAPER_BLK_R})",
                ylabel="ms (median)", yscale="log")
    axes[0].legend(fontsize=8)
    for ax, column, label in ((axes[1], "median_ms", "step ms (median)"), (axes[2], "peak_memory_gib", "peak GiB")):
        measured = [r for r in training if _f(r.get(column))]
        ax.bar(range(len(measured)), [_f(r[column]) for r in measured])
        ax.set_xticks(range(len(measured)), [f"{r['model']}\n{r['path']}" for r in measured], rotation=30,
                      fontsize=7)
        ax.set(title="training step (random weights)", ylabel=label)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out / "gpu_check.png", dpi=100)
    plt.close(fig)
