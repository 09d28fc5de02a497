#!/usr/bin/env bash
# The Tetrominoes CPU-preset sweep of issue 5 on a GPU, in one call: four
# variants train side by side for SECONDS_EACH (default 430) and stop with SIGINT;
# their metrics.jsonl files go to $OUT. Also the GPU selfcheck of the layers.
set -u
OUT=${OUT:-gpu-logs}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 CUPY_TF32=0
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD
fi
# `bash bench/preset_sweep.sh seeds`: the current preset (batch 16, lr 8e-4,
# 5,500 steps, decay 5,000) with seeds 1-6 instead.
S=${SECONDS_EACH:-430}
SPECS=("b32 32 3000" "b16 16 5700" "b8 8 9700" "b16lr8 16 5700 8e-4")
if [ "${1:-}" = seeds ]; then
  SPECS=(); for s in 1 2 3 4 5 6; do SPECS+=("seed$s 16 5500 8e-4 $s 5000"); done
fi
for spec in "${SPECS[@]}"; do
  set -- $spec
  timeout -s INT -k 20 "$S" python3 bench/preset_sweep.py "$@" --device gpu > "$OUT/$1.log" 2>&1 &
done
sleep 5
timeout 90 python3 cli.py selfcheck --device gpu > "$OUT/selfcheck.log" 2>&1
wait
for d in runs/sweep-*; do cp "$d/metrics.jsonl" "$OUT/$(basename $d).jsonl" 2>/dev/null; done
tail -n 3 "$OUT"/*.log
for f in "$OUT"/sweep-*.jsonl; do echo "== $f"; python3 -c "
import json
for line in open('$f'):
    r = json.loads(line)
    if 'eval' in r:
        e = r['eval']; print(r['step'], round(e['fg_ari'], 3), round(e['mse'], 4), round(e['slot_cosine'], 3))
"; done
