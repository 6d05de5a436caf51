#!/usr/bin/env bash
# segcam's GPU checks and benchmark, on a machine with a GPU and no network whose python3
# already holds torch and torchvision (run benchmarks/gpu/kit.sh first where pip works, and
# bring .gpu/ along). Estimated at 8 minutes on one H100 (not yet measured: each benchmark
# configuration costs ~20 s of process start and warm-up beside its timed seconds; rehearsed on the CPU with
# DEVICE=cpu SECONDS_PER_RUN=3 MEMORY_JOBS=200 in 7.5 minutes, and with
# SECONDS_PER_RUN=2 MEMORY_JOBS=100 in 5 minutes 11 s at stop 41). Results go to $OUT (default /tmp/segcam-gpu).
# DEVICE=cpu rehearses the same steps where there is no GPU (no CUDA check then).
set -uo pipefail
DEVICE=${DEVICE:-cuda:0}
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/segcam-gpu}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/segcam-site \
  .gpu/whl/*.whl || exit 1
export PYTHONPATH=/tmp/segcam-site:$PWD PATH=$PWD/.gpu/bin:$PATH PYTHONUNBUFFERED=1
export LD_LIBRARY_PATH=$PWD/.gpu/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
if [[ $DEVICE == cuda* ]]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
  python3 -m benchmarks.gpu.check_cuda 2>&1 | tee "$OUT/check.txt"
  [[ ${PIPESTATUS[0]} == 0 ]] || exit 1
fi
# Two runs, each writing its own table: the batch sizes and the finishing lane first, so a run
# cut short by the device's time limit still leaves them.
# A step that fails leaves its log and no table: a result file copied after a failure would
# be an older run's. The script's status is the number of failed steps.
failed=0
for part in batching,overlap memory,precision; do
  python3 -m benchmarks.run --device "$DEVICE" --only "$part" --seconds "${SECONDS_PER_RUN:-6}" \
    --memory-jobs "${MEMORY_JOBS:-1000}" 2>&1 | tee "$OUT/bench-${part%%,*}.txt"
  if [[ ${PIPESTATUS[0]} == 0 ]]; then
    cp benchmarks/results/latest.md "$OUT/bench-${part%%,*}.md"
    cp "$(ls -t benchmarks/results/2*.json | head -1)" "$OUT/bench-${part%%,*}.json"
  else
    failed=$((failed + 1))
  fi
done
python3 -m benchmarks.postprocess --device "$DEVICE" --threads 1,4,8 --rounds 4 2>&1 | tee "$OUT/postprocess.txt"
if [[ ${PIPESTATUS[0]} == 0 ]]; then
  cp "$(ls -t benchmarks/results/postprocess-*.json | head -1)" "$OUT/postprocess.json"
else
  failed=$((failed + 1))
fi
exit "$failed"
