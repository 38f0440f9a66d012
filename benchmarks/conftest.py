"""Shared benchmark plumbing: after the run, print each group's times as ratios to the
group's fastest entry (all entries of a group run on the same inputs in one session)."""
import os

import torch

# A shared 2-core machine: with every core in one parallel region, a single busy core stalls
# each region. NNFF_BENCH_THREADS=1 keeps the ratios meaningful there (RESULTS.md says which).
if os.environ.get("NNFF_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["NNFF_BENCH_THREADS"]))


def pytest_terminal_summary(terminalreporter, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    groups = {}
    for bench in session.benchmarks:
        if bench.has_error or not bench.stats:
            continue
        groups.setdefault(bench.group or "", []).append(bench)
    terminalreporter.section(f"ratios to the fastest of each group (median; {torch.get_num_threads()} threads)")
    for group, benches in sorted(groups.items()):
        fastest = min(b.stats.median for b in benches)
        terminalreporter.write_line(f"{group}:")
        for b in sorted(benches, key=lambda b: b.stats.median):
            terminalreporter.write_line(f"  {b.name:<60} {b.stats.median * 1e3:10.2f} ms  x{b.stats.median / fastest:7.2f}")
