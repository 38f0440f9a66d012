# The README's commands. `make demo`: set up, then run the main job. `make test`: set up, then
# run the tests. Set-up makes .venv (seeing the system's packages, so an installed torch —
# e.g. a CUDA build on a GPU machine — is reused) and installs torch 2.13.0 CPU only when
# no torch is importable. The +cpu pin can never resolve to a CUDA build. The extension is
# built without build isolation (it compiles against the installed torch), so the build
# tools are installed first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0+cpu
# pyproject.toml's [build-system] requires (tests/test_packaging.py keeps them equal)
BUILD_TOOLS := "setuptools>=64" wheel "pybind11>=2.12" ninja "cmake>=3.18"

.PHONY: setup demo test bench clean

setup: $(VENV)/.stamp

# the extension's sources are prerequisites too: editing csrc/ rebuilds _C before test/demo/bench
$(VENV)/.stamp: pyproject.toml $(wildcard setup.py CMakeLists.txt) $(shell find csrc -type f 2>/dev/null)
	test -x $(PY) || $(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install $(BUILD_TOOLS)
	$(PY) -m pip install --no-build-isolation -e ".[dev,triton,data]"
	touch $@

demo: setup
	$(PY) -m nnformer_fast.demo

test: setup
	$(PY) -m pytest tests -q

bench: setup
	$(PY) -m pytest benchmarks --benchmark-only -q

clean:
	rm -rf $(VENV) build *.egg-info
