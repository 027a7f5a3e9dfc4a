#!/usr/bin/env bash
# Everything that needs a CUDA machine, in one go (sized to fit a short GPU loan):
#   1. tests/test_cuda.py + tests/test_gpu_crops.py  (the CUDA paths against the CPU paths)
#   2. benchmarks/bench_train_seg.py                 (train-seg examples/s, full VGG-16 at 320)
#   3. ddn demo --device cuda                        (the main job end to end on the GPU;
#      82 s at the 96 px defaults of 2026-11; the 64 px defaults run twice the classifier steps)
# Usage: bash benchmarks/gpu_checks.sh [LOG_DIR]   (run from the repository root)
# Each step has its own time limit so one hang does not cost the others; logs go to LOG_DIR.
# Where the ddn package is not installed, the repository root is put on PYTHONPATH;
# CV_TARBALL supplies OpenCV's contrib modules where the machine lacks them (gpu_env.sh).
set -u
LOG=${1:-gpu_logs}
mkdir -p "$LOG"
source "$(dirname "$0")/gpu_env.sh"  # PYTHONPATH, CV_TARBALL, the versions

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s)"
    local t0=$SECONDS
    timeout "$limit" "$@" >"$LOG/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$LOG/$name.log"
    echo "=== $name: exit $rc in $((SECONDS - t0)) s"
}

step tests "${TESTS_LIMIT:-100}" $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_gpu_crops.py
step bench "${BENCH_LIMIT:-170}" $PY benchmarks/bench_train_seg.py --batch 64 --steps 10
step demo "${DEMO_LIMIT:-200}" $PY -m cli.main demo --device cuda --out /tmp/ddn_demo_gpu
