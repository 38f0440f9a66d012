"""Shared benchmark plumbing.

Before the run: which nnformer_fast is measured and what its backends are, in the header. A
source tree without the compiled extension (a regular, non-editable install leaves it in
site-packages) does not shadow an installed copy that has it; a missing native backend is said
in the header, since its rows are then absent from every table. After the run: each group's
times as ratios to the group's fastest entry (all entries of a group run on the same inputs in
one session).
"""
import importlib.machinery
import importlib.util
import os
import platform
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

# A shared 2-core machine: with every core in one parallel region, a single busy core stalls
# each region. NNFF_BENCH_THREADS=1 keeps the ratios meaningful there (RESULTS.md says which).
if os.environ.get("NNFF_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["NNFF_BENCH_THREADS"]))


# the x86 extensions the CPU kernels (native) and ATen (torch backend) dispatch on
_ISA_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16", "amx_tile")


def machine_lines() -> list:
    """The CPU model, its ISA flags, the native kernels' dispatch level, threads and torch: what
    every benchmark table records."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:  # not Linux
        pass
    import nnformer_fast

    info = nnformer_fast.build_info()
    # a lesser CPU emulated for torch's own code (ATEN_CPU_CAPABILITY shows in the capability)
    onednn = f", ONEDNN_MAX_CPU_ISA={os.environ['ONEDNN_MAX_CPU_ISA']}" if os.environ.get("ONEDNN_MAX_CPU_ISA") else ""
    return [f"cpu: {model}; isa: {' '.join(f for f in _ISA_FLAGS if f in flags) or 'unknown'}",
            f"native cpu capability: {info['cpu_capability']} (this CPU runs {', '.join(info['cpu_capabilities'])}); "
            f"torch {torch.__version__} (ATen capability {torch.backends.cpu.get_cpu_capability()}"
            f"{onednn}); {torch.get_num_threads()} threads"]


def _has_extension(spec) -> bool:
    folder = Path(spec.origin).parent
    return any(folder.glob("_C.*.so")) or any(folder.glob("_C.*.pyd"))


def _prefer_installed_copy() -> str:
    """Take the source tree off sys.path when its nnformer_fast has no compiled extension and an
    installed copy has one; returns what the header says about it ('' when nothing changed)."""
    spec = importlib.util.find_spec("nnformer_fast")
    if spec is None or spec.origin is None or not Path(spec.origin).is_relative_to(ROOT) or _has_extension(spec):
        return ""
    others = [p for p in sys.path if Path(p or ".").resolve() != ROOT]
    installed = importlib.machinery.PathFinder.find_spec("nnformer_fast", others)
    if installed is None or not _has_extension(installed):
        return ""
    sys.path[:] = others
    return (f"nnformer_fast: measuring the installed copy {Path(installed.origin).parent} (the source tree's "
            "copy has no compiled extension)")


_SWITCHED = _prefer_installed_copy()


def pytest_report_header(config):
    import nnformer_fast

    info = nnformer_fast.build_info()
    lines = [_SWITCHED] if _SWITCHED else []
    lines.append(f"nnformer_fast {nnformer_fast.__version__} from {Path(nnformer_fast.__file__).parent}; "
                 f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
                 f"backends {nnformer_fast.backends()}")
    lines += machine_lines()
    if info["native"]:
        lines.append(f"native build: torch {info['built_torch']}, CPU flags '{info['cpu_flags']}', "
                     f"OpenMP {info['openmp']}, CUDA kernels {info['cuda']}")
    else:
        lines.append(f"WARNING: no native backend ({nnformer_fast.backends()['native']}): the tables below "
                     "have no native rows")
    return lines


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
    for line in machine_lines():
        terminalreporter.write_line(line)
    for group, benches in sorted(groups.items()):
        fastest = min(b.stats.median for b in benches)
        terminalreporter.write_line(f"{group}:")
        for b in sorted(benches, key=lambda b: b.stats.median):
            terminalreporter.write_line(f"  {b.name:<60} {b.stats.median * 1e3:10.2f} ms  x{b.stats.median / fastest:7.2f}")
