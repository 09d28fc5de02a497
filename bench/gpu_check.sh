#!/usr/bin/env bash
# The GPU check of issue 6, in one call. Logs go to $OUT (or ./gpu-logs).
# Needs the wheels in .whl (autograd is not on the GPU image): see docs/performance.md.
set -u
OUT=${OUT:-gpu-logs}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$OUT/gpu.txt"
python3 cli.py info 2>&1 | tee -a "$OUT/gpu.txt"
timeout 90 python3 cli.py selfcheck --device gpu 2>&1 | tee "$OUT/selfcheck.log"
timeout 40 python3 bench/gpu_check.py prop1 2>&1 | tee -a "$OUT/selfcheck.log"
timeout 100 python3 bench/gpu_check.py compare 2>&1 | tee "$OUT/compare.log"
CUPY_TF32=1 timeout 90 python3 bench/gpu_check.py bench --tf32 2>&1 | tee "$OUT/bench.log"
CUPY_TF32=0 timeout 90 python3 bench/gpu_check.py bench 2>&1 | tee -a "$OUT/bench.log"
# Train the CPU presets on the GPU for what time is left (TRAIN_SECONDS each).
T=${TRAIN_SECONDS:-60}
CUPY_TF32=1 timeout -s INT -k 30 "$T" python3 cli.py train --task setpred --device gpu --quiet --out runs/gpu-setpred 2>&1 | tail -n 8 | tee "$OUT/train.log"
timeout 40 python3 cli.py eval runs/gpu-setpred --device gpu 2>&1 | tee -a "$OUT/train.log"
CUPY_TF32=1 timeout -s INT -k 30 "$T" python3 cli.py train --task discovery --dataset tetrominoes --device gpu --quiet --out runs/gpu-tetro 2>&1 | tail -n 8 | tee -a "$OUT/train.log"
timeout 40 python3 cli.py eval runs/gpu-tetro --device gpu 2>&1 | tee -a "$OUT/train.log"
for d in runs/gpu-*; do cp "$d/metrics.jsonl" "$OUT/$(basename $d)-metrics.jsonl" 2>/dev/null; done
