#!/usr/bin/env bash
# One command for a GPU machine: CuPy in the venv, the whole test suite on device=cuda,
# compute-sanitizer (memcheck, racecheck) over the kernel tests, the kernel benchmarks.
# Everything is logged to benchmarks/results/gpu_check_<GPU name>_<UTC time>.log (plus a JSON of
# the benchmark numbers); the exit status is non-zero if any step failed, but every step runs.
#
#   benchmarks/gpu_check.sh            # from anywhere inside the repository
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
python="$repo/.venv/bin/python"
results="$repo/benchmarks/results"
mkdir -p "$results"

if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "gpu_check: nvidia-smi not found; this script needs an NVIDIA GPU machine" >&2
    exit 2
fi
gpu_name="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)"
gpu_tag="$(printf '%s' "$gpu_name" | tr -cs 'A-Za-z0-9' '_' | sed 's/^_*//; s/_*$//')"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
log="$results/gpu_check_${gpu_tag}_${stamp}.log"
bench_json="$results/bench_gpu_kernels_${gpu_tag}_${stamp}.json"
failures=()

note() { printf '\n=== %s\n' "$*" | tee -a "$log"; }

run_step() {  # run_step <name> <command...>: logs output, records a failure without stopping
    local name="$1"
    shift
    note "$name: $*"
    "$@" 2>&1 | tee -a "$log"
    local status="${PIPESTATUS[0]}"
    if [ "$status" -ne 0 ]; then
        failures+=("$name (exit $status)")
    fi
    return 0
}

note "GPU: $gpu_name"
nvidia-smi 2>&1 | tee -a "$log"

# CuPy wheel matching the CUDA major version of the toolkit (nvcc) or, failing that, of the driver;
# the [ctk] extra brings NVRTC and the CUDA headers (cuda_fp16.h) that the kernels compile against.
cuda_major=""
if command -v nvcc >/dev/null 2>&1; then
    cuda_major="$(nvcc --version | sed -n 's/.*release \([0-9]*\)\..*/\1/p')"
fi
if [ -z "$cuda_major" ]; then
    cuda_major="$(nvidia-smi | sed -n 's/.*CUDA Version: \([0-9]*\)\..*/\1/p' | head -n 1)"
fi
if ! "$python" -c "import cupy" >/dev/null 2>&1; then
    note "installing CuPy for CUDA ${cuda_major:-12}"
    if ! "$python" -m pip install "cupy-cuda${cuda_major:-12}x[ctk]" 2>&1 | tee -a "$log"; then
        # CUDA 13 drivers run CUDA 12 wheels, so fall back when no cuda13x wheel is available.
        "$python" -m pip install "cupy-cuda12x[ctk]" 2>&1 | tee -a "$log"
    fi
fi
if ! "$python" -c "import cupy; cupy.cuda.runtime.getDeviceCount()" >>"$log" 2>&1; then
    note "CuPy is not importable or sees no GPU (offline machine? install cupy-cuda12x into .venv first)"
    failures+=("cupy unavailable")
fi

# NCCL for the distributed "nccl" backend: NVIDIA's wheel for the same CUDA major as CuPy
if ! "$python" -c "from cupy.cuda import nccl; nccl.NcclCommunicator" >/dev/null 2>&1; then
    note "installing NCCL (nvidia-nccl-cu${cuda_major:-12})"
    "$python" -m pip install "nvidia-nccl-cu${cuda_major:-12}" 2>&1 | tee -a "$log"
fi
# mpiexec -n 1 on one GPU (NCCL refuses two ranks on one GPU); -n <GPUs> when there are several
run_step "distributed: NCCL backend" "$python" -m pytest -x -q -rs -p no:cacheprovider tests/test_distributed.py -k nccl

export AVILA_ML_TEST_DEVICE=cuda
run_step "test suite on cuda" "$python" -m pytest -x -q tests

sanitizer="$(command -v compute-sanitizer || true)"
if [ -z "$sanitizer" ] && [ -x "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" ]; then
    sanitizer="${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer"
fi
if [ -n "$sanitizer" ]; then
    # The kernel tests launch every kernel through CuPy on small, tile-edge shapes.
    kernel_tests=("$python" -m pytest -x -q -p no:cacheprovider tests/cuda_kernels/test_host_emulation.py -k cuda)
    run_step "compute-sanitizer memcheck" "$sanitizer" --tool memcheck --error-exitcode 1 "${kernel_tests[@]}"
    run_step "compute-sanitizer racecheck" "$sanitizer" --tool racecheck --error-exitcode 1 "${kernel_tests[@]}"
else
    note "compute-sanitizer not found: memcheck and racecheck skipped"
    failures+=("compute-sanitizer missing")
fi

run_step "benchmarks" "$python" benchmarks/bench_gpu_kernels.py --json "$bench_json"

if [ "${#failures[@]}" -ne 0 ]; then
    note "FAILED: ${failures[*]}"
    echo "log: $log"
    exit 1
fi
note "all GPU checks passed"
echo "log: $log"
echo "benchmark numbers: $bench_json"
