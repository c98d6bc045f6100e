#!/usr/bin/env bash
# One command for a GPU machine, no network needed: the whole test suite on device=cuda (no -x:
# every failure is listed), compute-sanitizer (memcheck, racecheck) over the kernel tests with
# CuPy's memory pool off (so the sanitizer sees each buffer's real bounds), the kernel benchmarks.
# Everything is logged to benchmarks/results/gpu_check_<GPU name>_<UTC time>.log (plus a JSON of
# the benchmark numbers); the exit status is non-zero if any step failed, but every step runs.
# Each step has a time limit so the whole check ends within 10 minutes.
#
#   benchmarks/gpu_check.sh                 # uses $PYTHON, else .venv/bin/python, else makes .venv-gpu
#   benchmarks/gpu_check.sh --bench-only    # issue 14's tensor-core checks and benchmarks only (< 10 min):
#                                           # the tensor-core kernel tests on the GPU, then the conv4d
#                                           # (fp16/bf16/TF32 vs cuDNN) and attention (vs SDPA flash) timings
#
# Python environment: one that already has CuPy, torch and the CUDA wheels. Without .venv the
# script makes .venv-gpu with --system-site-packages (it sees the machine's CuPy/torch) and
# installs this checkout into it with `pip install --no-deps -e .` (no download).
set -uo pipefail
bench_only=0
if [ "${1:-}" = "--bench-only" ]; then bench_only=1; fi

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
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

run_step() {  # run_step <name> <seconds> <command...>: logs output, records a failure without stopping
    local name="$1" limit="$2"
    shift 2
    note "$name (limit ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$log"
    local status="${PIPESTATUS[0]}"
    if [ "$status" -ne 0 ]; then
        failures+=("$name (exit $status$([ "$status" -eq 124 ] && echo ', time limit'))")
    fi
    return 0
}

note "GPU: $gpu_name"
nvidia-smi 2>&1 | tee -a "$log"

if [ -n "${PYTHON:-}" ]; then
    python="$PYTHON"
elif [ -x "$repo/.venv/bin/python" ]; then
    python="$repo/.venv/bin/python"
else
    python="$repo/.venv-gpu/bin/python"
    if [ ! -x "$python" ]; then
        note "making .venv-gpu (--system-site-packages) and installing this checkout without dependencies"
        python3 -m venv --system-site-packages "$repo/.venv-gpu" 2>&1 | tee -a "$log"
        "$python" -m pip install -q --no-deps --no-build-isolation -e "$repo" 2>&1 | tee -a "$log"
    fi
fi
note "python: $python"
"$python" - <<'EOF' 2>&1 | tee -a "$log"
import importlib
for name in ("numpy", "cupy", "torch", "pytest", "avila_ml"):
    try:
        m = importlib.import_module(name)
        print(f"{name} {getattr(m, '__version__', '')} {getattr(m, '__file__', '')}")
    except Exception as e:  # noqa: BLE001 - report whatever is missing
        print(f"{name}: MISSING ({type(e).__name__}: {e})")
EOF
if ! "$python" -c "import cupy; assert cupy.cuda.runtime.getDeviceCount() > 0" >>"$log" 2>&1; then
    note "CuPy is not importable or sees no GPU: install cupy-cuda12x/13x into the environment first"
    failures+=("cupy unavailable")
fi

if [ "$bench_only" -eq 1 ]; then
    export AVILA_ML_TEST_DEVICE=cuda
    run_step "tensor-core kernel tests on the GPU" 150 "$python" -m pytest -q -p no:cacheprovider -p no:zarr \
        tests/cuda_kernels/test_tensor_core_conv4d.py -k cuda
    run_step "tensor-core benchmarks" 420 "$python" benchmarks/bench_gpu_kernels.py --suite tensor-cores \
        --repeats 3 --json "$bench_json"
    if [ "${#failures[@]}" -ne 0 ]; then
        note "FAILED: ${failures[*]}"
        echo "log: $log"
        exit 1
    fi
    note "tensor-core checks passed on $gpu_name"
    echo "log: $log"
    echo "benchmark numbers: $bench_json"
    exit 0
fi

# NCCL for the distributed "nccl" backend: NVIDIA's wheel for the same CUDA major as CuPy
if ! "$python" -c "from cupy.cuda import nccl; nccl.NcclCommunicator" >/dev/null 2>&1; then
    note "installing NCCL (nvidia-nccl-cu${cuda_major:-12})"
    "$python" -m pip install "nvidia-nccl-cu${cuda_major:-12}" 2>&1 | tee -a "$log"
fi
# mpiexec -n 1 on one GPU (NCCL refuses two ranks on one GPU); -n <GPUs> when there are several
run_step "distributed: NCCL backend" "$python" -m pytest -x -q -rs -p no:cacheprovider tests/test_distributed.py -k nccl

export AVILA_ML_TEST_DEVICE=cuda
run_step "test suite on cuda" 360 "$python" -m pytest -q -p no:cacheprovider -p no:zarr tests

sanitizer="$(command -v compute-sanitizer || true)"
if [ -z "$sanitizer" ] && [ -x "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" ]; then
    sanitizer="${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer"
fi
if [ -n "$sanitizer" ]; then
    # The kernel tests launch every kernel through CuPy on small, tile-edge shapes. With CuPy's
    # pool, buffers are carved out of large blocks and an overrun lands in a neighbour unseen:
    # AVILA_ML_CUPY_NO_POOL=1 makes tests/conftest.py call cupy.cuda.set_allocator(None).
    kernel_tests=("$python" -m pytest -x -q -p no:cacheprovider -p no:zarr tests/cuda_kernels/test_host_emulation.py -k cuda)
    AVILA_ML_CUPY_NO_POOL=1 run_step "compute-sanitizer memcheck" 90 \
        "$sanitizer" --tool memcheck --leak-check full --error-exitcode 1 "${kernel_tests[@]}"
    AVILA_ML_CUPY_NO_POOL=1 run_step "compute-sanitizer racecheck" 90 \
        "$sanitizer" --tool racecheck --error-exitcode 1 "${kernel_tests[@]}"
else
    note "compute-sanitizer not found: memcheck and racecheck skipped"
    failures+=("compute-sanitizer missing")
fi

# the float32 CUDA-core kernels here; the tensor-core benchmarks run with --bench-only (time budget)
run_step "benchmarks" 90 "$python" benchmarks/bench_gpu_kernels.py --suite float32 --json "$bench_json"

# --- issue 11 (h11): host-to-device overlap (pinned batches, DevicePrefetcher) and float16 autocast
run_step "copy/compute overlap and autocast" "$python" benchmarks/gpu_overlap.py \
    --json "$results/gpu_overlap_${gpu_tag}_${stamp}.json"
# --- end issue 11 block

if [ "${#failures[@]}" -ne 0 ]; then
    note "FAILED: ${failures[*]}"
    echo "log: $log"
    exit 1
fi
note "all GPU checks passed on $gpu_name"
echo "log: $log"
echo "benchmark numbers: $bench_json"
