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
NATIVE_SOURCES := $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/cpu/*.h csrc/cuda/*.cu csrc/cuda/*.cuh)
export MAX_JOBS ?= 2

.PHONY: demo test bench cuda-emulate cuda-check gpu-check study study-coarse clean

$(VENV)/.deps:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet "$(TORCH_SPEC)" setuptools wheel ninja
	touch $@

$(VENV)/.built: $(VENV)/.deps setup.py $(NATIVE_SOURCES)
	$(PIP) install --quiet --no-build-isolation -e '.[test]'
	touch $@

demo: $(VENV)/.built
	$(PY) -m hierparse.train

test: $(VENV)/.built
	$(PY) -m pytest -q tests

bench: $(VENV)/.built
	$(PY) -m pytest -q benchmarks --benchmark-only

# Does coarse-to-fine stacking help, and why? 9 variants x 3 seeds on synthetic LIP-like data, about
# 3 h on 2 cores, resumable run by run (benchmarks/study_runs/); writes benchmarks/study.{md,png,json}
# (run directories in runs/study).
study: $(VENV)/.built
	$(PY) benchmarks/study.py

# Learning fine classes from coarse labels: 9 variants over pools whose fraction f of images keeps
# part labels and the rest region labels (person masks in one row), 3 seeds; about 14 min a run on
# 2 cores, resumable run by run (benchmarks/study_coarse_runs/); writes benchmarks/study_coarse.{md,png,json}.
study-coarse: $(VENV)/.built
	$(PY) benchmarks/study_coarse.py

# The CUDA kernels executed on the CPU: csrc/cuda compiled as host C++ over the emulation of
# csrc/emulate/cuda_emulation.h, in a plain, a ThreadSanitizer and an AddressSanitizer build
# (build/cuda_emulation/), each run against the CPU op (tests/cuda_emulation/kernels.py); about 10 min
# on 2 cores. `make test` runs the same tests with the rest of the suite.
cuda-emulate: $(VENV)/.built
	$(PY) -m pytest -q tests/test_cuda_emulation.py

# Builds the extension with CUDA in its own venv (CUDA build of torch) and checks the CUDA kernels
# are registered; needs the CUDA 13.0 toolkit, not a GPU. Its torch is not `make test`'s: a
# CUDAExtension cannot build against the CPU wheel, and the CUDA 13.0 wheel at hand is 2.14.1.
# The venv is reused while it holds that torch; the build goes to .venv-cuda/build and
# .venv-cuda/tmp (ninja rebuilds only what changed), never into the source tree, so it does not
# collide with the CPU build of `make test`. One architecture (Hopper) is enough to check that the
# kernels compile and link; a real build targets the cards it runs on (setup.py, make gpu-check).
CUDA_TORCH_VERSION := $(patsubst torch==%,%,$(CUDA_TORCH_SPEC))
CUDA_PY := $(CUDA_VENV)/bin/python
cuda-check:
	@if $(CUDA_PY) -c 'import sys, torch; sys.exit(not (torch.__version__.split("+")[0] == "$(CUDA_TORCH_VERSION)" and torch.version.cuda))' 2>/dev/null; then \
		echo "cuda-check: reusing $(CUDA_VENV) (torch $(CUDA_TORCH_VERSION), CUDA build)"; \
	else \
		$(PYTHON) -m venv $(CUDA_VENV) && \
		$(CUDA_PY) -m pip install --quiet "$(CUDA_TORCH_SPEC)" setuptools wheel ninja numpy pyyaml; \
	fi
	PATH="$(CURDIR)/$(CUDA_VENV)/bin:$$PATH" \
	CUDA_HOME=$${CUDA_HOME:-/usr/local/cuda-13.0} FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="9.0" \
	CPATH="$$($(CUDA_PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nvidia/cu13/include$${CPATH:+:$$CPATH}" \
	$(CUDA_PY) setup.py --quiet build_ext --build-lib $(CUDA_VENV)/build --build-temp $(CUDA_VENV)/tmp
	$(CUDA_PY) tools/cuda_check.py

# The prepared device check, for a machine with an NVIDIA GPU and a CUDA torch already installed
# (no venv, no internet): builds in place for that card, runs the CUDA tests, the CUDA benchmarks and
# compute-sanitizer, writes benchmarks/gpu/ (or $$OUT). PYTHON picks the interpreter. See tools/gpu_check.sh.
gpu-check:
	PYTHON=$(PYTHON) tools/gpu_check.sh

clean:
	rm -rf build *.egg-info hierparse/_C*.so
