"""Packaging: the sdist holds everything to build and test, the build tools are declared once,
and setup.py's checks fail in one line before CMake starts (the oracle: git's file list and
pyproject.toml, read independently of MANIFEST.in and setup.py)."""
import os
import runpy
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SETUP = runpy.run_path(str(ROOT / "setup.py"), run_name="setup")  # helpers only: setup() runs as __main__
#: what a build and a test run need, whatever git says (the sdist may be all there is)
REQUIRED = ["CMakeLists.txt", "Makefile", "README.md", "pyproject.toml", "setup.py", "MANIFEST.in",
            "csrc/nnformer_fast.cpp", "csrc/cuda/common.cuh", "tests/conftest.py",
            "tests/cuda_emulator/emulator.h", "tests/cuda_emulator/launchers.cpp", "tests/test_ops.py",
            "docs/DESIGN.md", "benchmarks/conftest.py", "nnformer_fast/data/default/latency_cpu_ort.npz"]


def _import_path() -> list[str]:
    """This interpreter's import folders without the checkout, for a child run with ``-S`` (no .pth
    files: this checkout's editable finder would answer first)."""
    return [p for p in sys.path if p and Path(p).is_dir() and Path(p).resolve() != ROOT]


def _tracked_files() -> list[str]:
    """git's list of the repository's files; empty outside a git checkout (an unpacked sdist)."""
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        return []
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    return [f for f in out.stdout.splitlines() if (ROOT / f).is_file()] if out.returncode == 0 else []


@pytest.fixture(scope="module")
def sdist_files(tmp_path_factory) -> set:
    """Relative paths in the sdist built from a copy of the tree (the build writes egg-info beside it)."""
    src = tmp_path_factory.mktemp("src") / "nnformer_fast"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info",
                                                             "__pycache__", "*.so", ".pytest_cache", "runs"))
    out = tmp_path_factory.mktemp("dist")
    code = f"from setuptools import build_meta; print(build_meta.build_sdist({str(out)!r}))"
    res = subprocess.run([sys.executable, "-c", code], cwd=src, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    with tarfile.open(out / res.stdout.split()[-1]) as tar:
        names = [m.name for m in tar.getmembers() if m.isfile()]
    return {n.split("/", 1)[1] for n in names}


def test_sdist_has_what_a_build_and_the_tests_need(sdist_files):
    missing = sorted(set(REQUIRED + [f for f in _tracked_files() if f != ".gitignore"]) - sdist_files)
    assert not missing, f"missing from the sdist: {missing}"


def test_sdist_has_no_build_products(sdist_files):
    junk = [f for f in sdist_files if f.endswith((".so", ".pyc")) or "__pycache__" in f or f.startswith(".venv/")]
    assert not junk, junk


def test_build_tools_declared_once():
    """pyproject's [build-system] requires = setuptools + wheel + setup.py's checked tools = the Makefile's list."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    backend = [r for r in requires if r.startswith(("setuptools", "wheel"))]
    assert sorted(requires) == sorted(backend + list(SETUP["BUILD_TOOLS"]))
    makefile = (ROOT / "Makefile").read_text()
    line = next(x for x in makefile.splitlines() if x.startswith("BUILD_TOOLS"))
    assert sorted(t.strip('"') for t in line.split(":=")[1].split()) == sorted(requires)


def _setup_error(monkeypatch, **missing) -> str:
    """The message of setup.py's environment check with the named tools hidden."""
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if missing.get(name):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    if missing.get("programs"):
        monkeypatch.setitem(SETUP["_program"].__globals__, "_program", lambda name: None)
    SETUP["_check_build_environment"].cache_clear()
    try:
        with pytest.raises(Exception) as err:
            SETUP["_check_build_environment"]()
    finally:
        SETUP["_check_build_environment"].cache_clear()
    assert type(err.value).__name__ == "DistutilsSetupError"  # setuptools prints it as one "error:" line
    return str(err.value)


def test_build_without_torch_says_install_torch_and_no_build_isolation(monkeypatch):
    message = _setup_error(monkeypatch, torch=True)
    assert "\n" not in message and "install torch first" in message and "--no-build-isolation" in message


def test_build_without_tools_names_them(monkeypatch):
    message = _setup_error(monkeypatch, pybind11=True, programs=True)
    assert "\n" not in message and "--no-build-isolation" in message
    for tool in SETUP["BUILD_TOOLS"]:
        assert f'"{tool}"' in message


def _cache(build_dir: Path, **entries) -> Path:
    build_dir.mkdir(parents=True)
    (build_dir / "CMakeCache.txt").write_text("".join(f"{k}:FILEPATH={v}\n" for k, v in entries.items()))
    return build_dir


def test_stale_cmake_cache_starts_fresh(tmp_path):
    """A cache naming a ninja from a deleted pip build environment, or another Python, is dropped."""
    ninja, python = shutil.which("ninja") or sys.executable, sys.executable
    expected = {"CMAKE_HOME_DIRECTORY": str(ROOT), "CMAKE_GENERATOR": "Ninja", "CMAKE_MAKE_PROGRAM": ninja,
                "Python_EXECUTABLE": python}
    gone = str(tmp_path / "pip-build-env-x" / "bin" / "ninja")
    for stale in ({"CMAKE_MAKE_PROGRAM": gone}, {"Python_EXECUTABLE": str(tmp_path / "venv" / "python")},
                  {"CMAKE_GENERATOR": "Unix Makefiles"}, {"CMAKE_COMMAND": gone}):
        build_dir = _cache(tmp_path / "b", **{**expected, **stale})
        SETUP["_drop_stale_cache"](build_dir, expected)
        assert not build_dir.exists(), stale
    build_dir = _cache(tmp_path / "b", **expected, CMAKE_COMMAND=python)  # a valid cache is kept
    SETUP["_drop_stale_cache"](build_dir, expected)
    assert (build_dir / "CMakeCache.txt").is_file()


def test_benchmarks_measure_the_installed_extension_not_the_bare_source_tree(tmp_path):
    """After a regular install, `python -m pytest benchmarks` from the source tree (cwd first on
    sys.path) must import the installed copy that has _C, and say so in its header."""
    src, site = tmp_path / "src", tmp_path / "site"
    for pkg in (src / "nnformer_fast", site / "nnformer_fast"):
        pkg.mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
    (site / "nnformer_fast" / "_C.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    (src / "benchmarks").mkdir()
    shutil.copy(ROOT / "benchmarks" / "conftest.py", src / "benchmarks" / "conftest.py")
    code = ("import runpy; said = runpy.run_path('benchmarks/conftest.py')['_SWITCHED']; "
            "import nnformer_fast; print(nnformer_fast.__file__); print(said)")
    res = subprocess.run([sys.executable, "-S", "-c", code], cwd=src, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": os.pathsep.join([str(site), *_import_path()]),
                              "PATH": os.environ["PATH"]})
    assert res.returncode == 0, res.stderr[-2000:]
    where, said = res.stdout.splitlines()
    assert Path(where).parent == site / "nnformer_fast" and "installed copy" in said


def test_pure_python_install_warns_once_in_its_own_words(tmp_path):
    """NNFF_SKIP_EXT=1 installs no _C: one warning saying so, no circular-import text, no build advice."""
    shutil.copytree(ROOT / "nnformer_fast", tmp_path / "nnformer_fast",
                    ignore=shutil.ignore_patterns("_C.*", "__pycache__"))
    code = "import nnformer_fast, nnformer_fast.ops; print(nnformer_fast.backends())"
    res = subprocess.run([sys.executable, "-S", "-W", "always", "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300, env={"PYTHONPATH": os.pathsep.join(_import_path()),
                                                     "PATH": os.environ["PATH"], "HOME": str(tmp_path)})
    assert res.returncode == 0, res.stderr[-2000:]
    warnings = [line for line in res.stderr.splitlines() if "Warning" in line and "nnformer_fast" in line]
    assert len(warnings) == 1 and "pure-Python install" in warnings[0], res.stderr
    assert "circular" not in res.stderr and "pip install" not in res.stderr
    assert "'native': 'not installed (pure-Python install)'" in res.stdout and "'torch': 'ok'" in res.stdout


def test_predict_without_onnx_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    """predict on an ONNX file without the [data] extra: one line, exit 2, no traceback."""
    from nnformer_fast.cli import main
    from nnformer_fast.train import TrainConfig, fit
    from nnformer_fast.train.synthetic import synthetic_latency_set

    synthetic_latency_set(24, seed=0).save(tmp_path / "set.npz")
    ckpt = fit(TrainConfig(model={"dim": 32, "n_layers": 1}, epochs=1, max_nodes=300, warmup=1,
                           progress=False, precision="fp32", threads=1, data=str(tmp_path / "set.npz"),
                           out=str(tmp_path / "out"), max_steps=1)).checkpoint
    (tmp_path / "m.onnx").write_bytes(b"\x08\x07")
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if the [data] extra were not installed
    capsys.readouterr()  # what training printed
    assert main(["predict", ckpt, str(tmp_path / "m.onnx"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "nnformer_fast[data]" in err, err
