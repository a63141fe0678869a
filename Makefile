# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU build of torch; on machines whose package index serves CUDA builds by default, point
# TORCH_SPEC (and PIP_EXTRA_INDEX_URL) at a CPU wheel.
TORCH_SPEC ?= torch==2.13.0
CUDA_TORCH_SPEC ?= torch==2.14.1
CUDA_VENV := .venv-cuda
NATIVE_SOURCES := $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/cuda/*.cu)
export MAX_JOBS ?= 2

.PHONY: demo test bench cuda-check study clean

$(VENV)/.deps:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet "$(TORCH_SPEC)" setuptools wheel ninja
	touch $@

$(VENV)/.built: $(VENV)/.deps setup.py $(NATIVE_SOURCES)
	$(PIP) install --quiet --no-build-isolation -e '.[test]'
	touch $@

demo: $(VENV)/.built
	$(VENV)/bin/hierparse show lip

test: $(VENV)/.built
	$(PY) -m pytest -q tests

bench: $(VENV)/.built
	$(PY) -m pytest -q benchmarks --benchmark-only

# Builds the extension with CUDA in its own venv (CUDA build of torch) and checks the CUDA kernels
# are registered; needs the CUDA 13.0 toolkit, not a GPU.
cuda-check:
	$(PYTHON) -m venv $(CUDA_VENV)
	$(CUDA_VENV)/bin/pip install --quiet "$(CUDA_TORCH_SPEC)" setuptools wheel ninja numpy pyyaml
	CUDA_HOME=$${CUDA_HOME:-/usr/local/cuda-13.0} FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="8.0;9.0" \
	CPATH="$$($(CUDA_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nvidia/cu13/include$${CPATH:+:$$CPATH}" \
	$(CUDA_VENV)/bin/python setup.py build_ext --build-lib $(CUDA_VENV)/build --build-temp $(CUDA_VENV)/tmp
	cd $(CUDA_VENV)/build && ../bin/python $(CURDIR)/tools/cuda_check.py

clean:
	rm -rf build *.egg-info hierparse/_C*.so
