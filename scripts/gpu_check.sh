#!/usr/bin/env bash
# The gpu layer on one NVIDIA GPU, in under 8 minutes: pytest -m gpu, then a short m2det bench.
#
# Usage (from the repository root):
#   GPU_WHEELS=/path/to/wheels scripts/gpu_check.sh [extra pytest arguments]
#
# GPU_WHEELS (optional): a folder of wheels to install from, with no index (the
#   GPU host may have no network): the project's dependencies (pip download
#   -d wheels ".[test]" --extra-index-url https://download.pytorch.org/whl/cpu),
#   onnxruntime-gpu, and for the tensorrt backend TensorRT 10's wheels
#   (tensorrt-cu12, tensorrt-cu12-libs, tensorrt-cu12-bindings); CUDA 12 and
#   cuDNN 9 come from the host or from nvidia-*-cu12 wheels in the same folder.
#   Without GPU_WHEELS the current Python environment is used as it is.
# PYTHON: the interpreter to make the virtual environment with (default python3);
#   VENV: where (default .venv-gpu; reused when it exists).
# OUT: where logs and figures go (default ./m2det-gpu-check): gpu-junit.xml,
#   pytest.log, outputs/ (saved runs, fp16-forecast-accuracy__*.json,
#   gpu-throughput.json with the GPU model, driver, CUDA and TensorRT versions
#   beside every figure), bench/ (bench.json, bench.md), environment.txt, summary.txt.
# M2DET_DEVICE_ID (default 0), M2DET_WEIGHTS (a trained checkpoint: the
#   detection gates then apply), M2DET_COCO_ROOT (adds 16 COCO images),
#   M2DET_GPU_BATCH_SIZES (throughput gate, default 8,1: largest first, so one
#   engine profile covers the rest).
#
# Time: the ONNX export (~15 s), one TensorRT fp16 engine build per new batch
# size (about a minute each on a modern GPU; cached under the project cache,
# $M2DET_CACHE_DIR, so a second run loads them), the fp16 forecast on the CPU,
# the bench. pytest is cut at 330 s and the bench at 100 s, so the whole stays
# under 8 minutes even when something hangs. Exit status: 0 when both passed.
set -uo pipefail

cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/m2det-gpu-check}"
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
DEVICE="${M2DET_DEVICE_ID:-0}"
BATCHES="${M2DET_GPU_BATCH_SIZES:-8,1}"
export M2DET_CACHE_DIR="${M2DET_CACHE_DIR:-$PWD/.cache-m2det}"
export M2DET_DEVICE_ID="$DEVICE"
start=$(date +%s)
say() { echo "[gpu_check $(( $(date +%s) - start ))s] $*"; }

PY="${PYTHON:-python3}"
if [ -n "${GPU_WHEELS:-}" ]; then
    VENV="${VENV:-.venv-gpu}"
    [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV" || exit 3
    PY="$VENV/bin/python"
    say "installing from $GPU_WHEELS (no index)"
    "$PY" -m pip install -q --no-index --find-links "$GPU_WHEELS" ".[test]" || exit 3
    # onnxruntime and onnxruntime-gpu ship the same module: keep only the GPU build
    "$PY" -m pip uninstall -q -y onnxruntime
    "$PY" -m pip install -q --no-index --find-links "$GPU_WHEELS" --no-deps --force-reinstall onnxruntime-gpu || exit 3
    "$PY" -m pip install -q --no-index --find-links "$GPU_WHEELS" tensorrt-cu12 \
        || say "no TensorRT wheels in $GPU_WHEELS: the tensorrt tests will skip unless the host has TensorRT"
fi

# CUDA, cuDNN and TensorRT libraries installed as wheels are found through LD_LIBRARY_PATH,
# which the loader reads when a process starts: set it here, before Python.
libs=$("$PY" - <<'EOF'
import glob, importlib.util, os, site
dirs = []
for base in site.getsitepackages():
    dirs += glob.glob(os.path.join(base, "nvidia", "*", "lib")) + glob.glob(os.path.join(base, "tensorrt_libs"))
print(":".join(d for d in dirs if os.path.isdir(d)))
EOF
)
[ -n "$libs" ] && export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

{
    echo "date: $(date -u +%FT%TZ)"
    nvidia-smi || echo "nvidia-smi: not found or failed"
    "$PY" -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
    "$PY" -c "from m2det_impl.environment import gpu_info; print('gpu_info', gpu_info($DEVICE))"
    "$PY" -m pip freeze
} > "$OUT/environment.txt" 2>&1
say "$(grep -E '^(onnxruntime|gpu_info)' "$OUT/environment.txt")"

say "pytest -m gpu (throughput batch sizes $BATCHES)"
timeout --signal=INT --kill-after=20 330 "$PY" -m pytest -m gpu -p no:cacheprovider -rs -v \
    --device-id "$DEVICE" --batch-sizes "$BATCHES" --save-outputs "$OUT/outputs" \
    --junitxml "$OUT/gpu-junit.xml" tests/hardware/test_gpu.py "$@" 2>&1 | tee "$OUT/pytest.log"
tests=${PIPESTATUS[0]}
say "pytest exit $tests"

say "m2det bench --backend tensorrt --versus onnxruntime-cuda"
timeout --signal=INT --kill-after=20 100 "$PY" -m m2det_impl.cli bench --backend tensorrt --versus onnxruntime-cuda \
    --device-id "$DEVICE" --batch-sizes 8 --limit 8 --warmup 2 --repeats 5 --no-end-to-end --host-images 16 \
    --output "$OUT/bench" --quiet
bench=$?
say "bench exit $bench"

{
    echo "pytest -m gpu: exit $tests (0 passed; 1 failed; 5 nothing collected; 124/130 cut at 330 s)"
    echo "m2det bench: exit $bench"
    grep -E "^(PASSED|FAILED|SKIPPED|ERROR)|gate (passed|FAILED)|passed|failed" "$OUT/pytest.log" | tail -20
    echo "total: $(( $(date +%s) - start )) s"
} | tee "$OUT/summary.txt"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
