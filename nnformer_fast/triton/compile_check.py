"""Compile every Triton kernel with every autotune config for a GPU, on a machine without one.

    python -m nnformer_fast.triton.compile_check [--arch 90] [--jobs 2] [--quick]

CI tests the kernels under the interpreter, which never compiles them and runs only each
kernel's ``INTERPRET_CONFIG``: a kernel that does not lower for a GPU, or an autotune config
that spills registers or overflows shared memory, would first show on a GPU. This runs the
launchers on small CPU tensors with the launch intercepted, which gives each kernel's
argument types and compile-time constants as a real launch passes them, then lowers every
(kernel, config) through Triton's NVIDIA backend to a cubin for ``sm_<arch>`` and reads its
registers, stack (spilled registers) and shared memory. The integer arguments are compiled
without the divisibility hints a real launch adds, so register counts are close to, not
exactly, the GPU's.

Prints one table; exit status 1 when a kernel fails to compile or needs more shared memory than
the architecture has. Must run without ``TRITON_INTERPRET=1`` (the interpreter replaces the
kernels). ``--quick`` (the test suite's) compiles every config only for the training default
(bf16, head dim 128, dropout) and each kernel's first config for the other dtypes and head dims.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Iterator

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from .. import testing
from . import bigin as tbigin
from . import dag_attention as tattn
from . import dropout as tdropout
from ._common import INTERPRET

#: Shared memory per block (bytes) by compute capability: the opt-in maximum.
MAX_SHARED = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
_POINTEE = {torch.float64: "fp64", torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
            torch.int64: "i64", torch.int32: "i32"}
_LAUNCHER_MODULES = (tattn, tbigin, tdropout)


@dataclass(frozen=True)
class Case:
    """One set of launcher inputs: dtype, attention head dim, dropout on or off."""
    dtype: torch.dtype
    head_dim: int
    dropout: bool

    @property
    def name(self) -> str:
        return f"{_POINTEE[self.dtype]} Dh={self.head_dim}" + (" dropout" if self.dropout else "")


CASES = (
    Case(torch.bfloat16, 128, True),   # training default
    Case(torch.float32, 256, True),    # largest tiles
    Case(torch.float16, 40, False),    # accuracy model's head dim
    Case(torch.float64, 64, False),
)


@dataclass(frozen=True)
class Job:
    """One kernel compile. ``module`` and ``kernel`` name the ``triton.jit`` function (or the
    autotuner around it); ``signature`` and ``constexprs`` are as ``ASTSource`` takes them."""
    module: str
    kernel: str
    case: str
    signature: dict
    constexprs: dict
    num_warps: int
    num_stages: int

    @property
    def name(self) -> str:
        return f"{self.module.rsplit('.', 1)[-1]}.{self.kernel}"

    @property
    def config(self) -> str:
        tiles = ",".join(f"{k}={v}" for k, v in sorted(self.constexprs.items()) if k.startswith("BLOCK"))
        return f"{tiles} w={self.num_warps} s={self.num_stages}"


@dataclass(frozen=True)
class Resources:
    """What one compiled kernel uses: registers and stack bytes (spills) per thread, shared
    memory bytes per block."""
    registers: int
    stack: int
    shared: int


@contextlib.contextmanager
def _intercepted_launches() -> Iterator[list]:
    """Within the block, the launchers record ``(kernel, args, kwargs)`` instead of launching."""
    launches: list = []

    class _Recorder:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append((self.kernel, args, kwargs))

    saved = {m: m.wrap_triton for m in _LAUNCHER_MODULES}
    for m in _LAUNCHER_MODULES:
        m.wrap_triton = _Recorder
    try:
        yield launches
    finally:
        for m, fn in saved.items():
            m.wrap_triton = fn


def _run_launchers(case: Case) -> None:
    """Every launch of the backend once: attention forward and backward, bigin forward and
    backward (relu and gelu), dropout."""
    graph = testing.random_batch([6, 9], seed=0)
    n, heads = graph.num_nodes, 4
    q = torch.randn(n, heads, case.head_dim, dtype=case.dtype)
    p = 0.1 if case.dropout else 0.0
    _, lse = tattn.dag_attention_fwd(q, q, q, graph.rel_rowptr, graph.rel_col, graph.rel_tperm, p, 0.125, 0)
    tattn.dag_attention_bwd(q, q, q, q, lse, graph.rel_rowptr, graph.rel_col, graph.rel_tperm, p, 0.125, 0)
    h = torch.randn(n, 4 * heads * case.head_dim, dtype=case.dtype)
    csr = (graph.adj_rowptr, graph.adj_col, graph.adjt_rowptr, graph.adjt_col)
    for act in ("relu", "gelu"):
        tbigin.bigin_fwd(h, h, *csr, act)
        tbigin.bigin_bwd(h, h, h, *csr, act)
    if case.dropout:
        tdropout.dropout_fwd(h, p, 0)


def _arg_type(value) -> str:
    """Triton's signature type of a runtime argument."""
    if isinstance(value, torch.Tensor):
        return "*" + _POINTEE[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -2**31 <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"no Triton type for {type(value).__name__}")


def jobs_for(case: Case, every_config: bool = True) -> list[Job]:
    """One job per distinct (kernel, argument types, constants) launch of ``case`` and config
    (only each kernel's first config unless ``every_config``)."""
    with _intercepted_launches() as launches:
        _run_launchers(case)
    jobs: dict = {}
    for kernel, args, kwargs in launches:
        autotuner = kernel if isinstance(kernel, triton.runtime.Autotuner) else None
        fn = autotuner.fn if autotuner else kernel
        values = dict(zip(fn.arg_names, args), **kwargs)
        signature, constexprs = {}, {}
        for param in fn.params:
            if param.is_constexpr:
                signature[param.name] = "constexpr"
                if param.name in values:
                    constexprs[param.name] = values[param.name]
            else:
                signature[param.name] = _arg_type(values[param.name])
        configs = autotuner.configs if autotuner else [triton.Config({})]
        for config in configs if every_config else configs[:1]:
            job = Job(fn.fn.__module__, fn.__name__, case.name, signature, dict(constexprs, **config.kwargs),
                      config.num_warps, config.num_stages)
            jobs.setdefault((job.name, repr(sorted(signature.items())), repr(sorted(job.constexprs.items())),
                             job.num_warps, job.num_stages), job)
    return list(jobs.values())


def _resources(cubin: bytes) -> Resources:
    """Registers, stack and shared memory of the cubin's one kernel, from ``cuobjdump``."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True,
                              check=True).stdout
    fields = dict(re.findall(r"\b(REG|STACK|SHARED):(\d+)", text))
    return Resources(int(fields["REG"]), int(fields["STACK"]), int(fields["SHARED"]))


def compile_job(job: Job, arch: int) -> Resources:
    """Lower ``job`` to a cubin for ``sm_<arch>``; raises what Triton raises when it cannot."""
    fn = getattr(importlib.import_module(job.module), job.kernel)
    fn = fn.fn if isinstance(fn, triton.runtime.Autotuner) else fn
    constexprs = {(fn.arg_names.index(k),): v for k, v in job.constexprs.items()}
    source = ASTSource(fn, job.signature, constexprs=constexprs)
    kernel = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                            options=dict(num_warps=job.num_warps, num_stages=job.num_stages))
    return _resources(kernel.asm["cubin"])


def _compile_or_error(job: Job, arch: int):
    try:
        return compile_job(job, arch)
    except Exception as exc:  # reported per job; the table keeps going
        lines = str(exc).strip().splitlines()
        return f"{type(exc).__name__}: {lines[-1] if lines else ''}"


def check(arch: int = 90, quick: bool = False, jobs: int = 1) -> list[tuple[Job, object]]:
    """Compile every job of :data:`CASES` (``quick``: every config of the first case, the first
    config of the others); returns (job, Resources or an error message) pairs."""
    if INTERPRET:
        raise RuntimeError("TRITON_INTERPRET=1 replaces the kernels with the interpreter: run without it")
    all_jobs = [job for n, case in enumerate(CASES) for job in jobs_for(case, every_config=n == 0 or not quick)]
    archs = [arch] * len(all_jobs)
    if jobs == 1:
        return list(zip(all_jobs, map(_compile_or_error, all_jobs, archs)))
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        return list(zip(all_jobs, pool.map(_compile_or_error, all_jobs, archs)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, choices=sorted(MAX_SHARED),
                        help="compute capability to compile for (90: H100/H200)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compiles")
    parser.add_argument("--quick", action="store_true",
                        help=f"every config for {CASES[0].name}, each kernel's first config for the other cases")
    args = parser.parse_args(argv)
    results = check(args.arch, args.quick, args.jobs)
    failed = 0
    print(f"Triton {triton.__version__}, sm_{args.arch}: {len(results)} kernels")
    print(f"{'kernel':<30} {'case':<20} {'config':<44} {'regs':>4} {'stack':>6} {'smem':>7}")
    for job, res in results:
        if isinstance(res, str):
            failed += 1
            print(f"{job.name:<30} {job.case:<20} {job.config:<44} FAILED {res}")
            continue
        too_big = res.shared > MAX_SHARED[args.arch]
        failed += too_big
        print(f"{job.name:<30} {job.case:<20} {job.config:<44} {res.registers:>4} {res.stack:>6} {res.shared:>7}"
              + ("  shared memory over the limit" if too_big else ""))
    spilling = sum(1 for _, res in results if not isinstance(res, str) and res.stack)
    print(f"{len(results) - failed} compiled and fit, {failed} failed; {spilling} spill registers (stack > 0)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
