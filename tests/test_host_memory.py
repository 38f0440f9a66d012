"""keep_freed_memory (the glibc heap settings fit applies on the CPU): allocations the size of a
training step's tensors, freed and made again, stop page-faulting in afresh."""
import platform
import subprocess
import sys
import textwrap

import pytest

from nnformer_fast.train.host_memory import keep_freed_memory

_PROBE = textwrap.dedent("""
    import resource, sys, torch
    from nnformer_fast.train.host_memory import keep_freed_memory
    if sys.argv[1] == "keep":
        assert keep_freed_memory()
    def step():  # blocks of 1-24 MiB, as one step's activations and gradients, then freed
        blocks = [torch.ones(mib << 18) for mib in (1, 3, 6, 12, 24, 5, 9, 18)]
        del blocks
    step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        step()
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
""")

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def _faults_per_step(mode: str) -> float:
    proc = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return float(proc.stdout)


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt only")
def test_freed_blocks_are_reused_without_page_faults():
    default, kept = _faults_per_step("default"), _faults_per_step("keep")
    # 78 MiB a step is 20,000 pages, which glibc's defaults hand back and fault in again every
    # step: 4,900-20,000 faults here (the kernel may map several pages per fault); kept, ~50
    assert default > 1_000 and kept < default / 5, (default, kept)


@pytest.mark.skipif(GLIBC, reason="off glibc only")
def test_other_c_libraries_are_left_alone():
    assert keep_freed_memory() is False
