#!/usr/bin/env bash
# The prepared device check (`make gpu-check`): on a machine with an NVIDIA GPU and a CUDA build of
# torch already installed (no internet needed), build the extension in place for this card, run the
# CUDA-parametrised tests, the CUDA benchmarks and compute-sanitizer (memcheck, racecheck) over a
# small selection, and write what happened under $OUT (default benchmarks/gpu/):
#   device.txt  build.log  tests.txt  benchmarks.json  benchmarks.txt  benchmarks.md  sanitizer.txt  summary.md
# Needs on that machine: python with torch (CUDA), numpy, pyyaml, scipy, pillow, pytest,
# pytest-benchmark, hypothesis; nvcc and ninja; compute-sanitizer for the last stage. Every stage
# runs even when an earlier one failed (after a failed build only the build is reported); the exit
# status is 1 when any stage failed. About 5-8 minutes on an H100, most of it the build.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/gpu}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0
summary="$OUT/summary.md"
echo "# gpu-check, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)" > "$summary"

stage() {  # stage NAME COMMAND...: run, time, record pass/fail in the summary
    local name=$1; shift
    local start=$SECONDS
    if "$@"; then
        echo "- $name: passed ($((SECONDS - start)) s)" >> "$summary"
    else
        echo "- $name: FAILED, exit $? ($((SECONDS - start)) s)" >> "$summary"
        status=1
        return 1
    fi
}

device() {
    "$PY" - <<'EOF'
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name()}, "
      f"capability {'.'.join(map(str, torch.cuda.get_device_capability()))}, "
      f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
EOF
    nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv 2>/dev/null || true
}

build() {
    local arch
    arch=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())") || return 1
    FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS=${MAX_JOBS:-$(nproc)} \
        "$PY" setup.py build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; return 1; }
    "$PY" -c "import torch, hierparse.ops as ops; assert ops.HAS_EXTENSION and torch.cuda.is_available(); print('built', ops.__name__)"
}

CUDA_TESTS=(tests/test_ops.py tests/test_fused_upsample.py tests/test_tree_min.py tests/test_upsample_decode.py
            tests/test_losses.py tests/test_metrics.py tests/test_ohem.py tests/test_coarse_labels.py)
tests() {
    "$PY" -m pytest -q -p no:cacheprovider "${CUDA_TESTS[@]}" -k cuda > "$OUT/tests.txt" 2>&1
    local code=$?
    tail -25 "$OUT/tests.txt"
    return $code
}

benchmarks() {
    "$PY" -m pytest -q -p no:cacheprovider benchmarks/test_ops.py benchmarks/test_fused_upsample.py -k cuda \
        --benchmark-only --benchmark-json "$OUT/benchmarks.json" -s > "$OUT/benchmarks.txt" 2>&1
    local code=$?
    "$PY" tools/gpu_report.py "$OUT/benchmarks.json" > "$OUT/benchmarks.md" && cat "$OUT/benchmarks.md"
    return $code
}

SANITIZED="cuda and (single_pixel or level_without_valid or all_pixels_ignored or labels_outside or gradcheck or gives_the_cpu_maps or keeps_the_pixels or scores_class_sets)"
sanitizer() {
    command -v compute-sanitizer > /dev/null || { echo "compute-sanitizer not found"; return 1; }
    local code=0 tool
    : > "$OUT/sanitizer.txt"
    for tool in memcheck racecheck; do
        echo "== $tool" >> "$OUT/sanitizer.txt"
        timeout 240 compute-sanitizer --tool "$tool" --error-exitcode 3 --print-limit 20 \
            "$PY" -m pytest -q -x -p no:cacheprovider tests/test_ops.py tests/test_tree_min.py \
            tests/test_upsample_decode.py tests/test_ohem.py tests/test_coarse_labels.py -k "$SANITIZED and not bfloat16 and not float16" \
            >> "$OUT/sanitizer.txt" 2>&1 || code=1
        tail -3 "$OUT/sanitizer.txt"
    done
    return $code
}

if ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2> /dev/null; then
    echo "- device: FAILED, $PY has no CUDA device (torch.cuda.is_available() is false); nothing else ran" >> "$summary"
    cat "$summary"
    exit 1
fi
stage "device" device > "$OUT/device.txt"
cat "$OUT/device.txt"
if stage "build (TORCH_CUDA_ARCH_LIST of this card)" build; then
    stage "CUDA tests (-k cuda)" tests
    stage "CUDA benchmarks" benchmarks
    stage "compute-sanitizer memcheck + racecheck" sanitizer
fi
cat "$summary"
exit $status
