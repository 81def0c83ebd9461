"""Prints, after a benchmark run, each MoRe path's time as a ratio to LoRA's, from this run's medians."""
import collections

import torch

torch.set_num_threads(torch.get_num_threads())  # the thread count is recorded in the machine info


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    medians = collections.defaultdict(dict)
    for bench in session.benchmarks:
        if bench.stats is None:
            continue
        path = bench.params["path"]
        medians[bench.group][path] = bench.stats.median
    lines = []
    for group, times in sorted(medians.items()):
        if "lora" not in times:
            continue
        ratios = ", ".join(f"{path}/lora = {t / times['lora']:.2f}" for path, t in sorted(times.items()) if path != "lora")
        lines.append(f"{group}: {ratios}")
    if lines:
        terminalreporter.write_sep("-", f"time ratios to LoRA at equal trainable parameters ({torch.get_num_threads()} threads)")
        for line in lines:
            terminalreporter.write_line(line)
