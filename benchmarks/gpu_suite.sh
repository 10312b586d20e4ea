#!/usr/bin/env bash
# One prepared GPU session (≤ 8 minutes on one H200): everything issue 13 asks to measure on CUDA, in
# one go, results under $OUT (default gpu-results/). Run from the repository root with the project
# installed:
#     bash benchmarks/gpu_suite.sh                     # on the GPU machine
#     DRY_RUN=1 bash benchmarks/gpu_suite.sh           # CPU dry run: same steps, tiny sizes (tests use it)
# Time limits add up to 8 minutes (80+80+120+80+60+60 s). Every step has its own limit and a failure does not stop the others; the exit status says
# whether all passed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
if [[ -n "${DRY_RUN:-}" ]]; then
  DEV=cpu; SIZE=(--quick --only backbone --rounds 5 --seconds 0 --warmup 1); LIMIT=300; SHORT=300; COMPILED=backbone
else
  DEV=cuda; SIZE=(--only backbone,classification,fewshot,segmentation,detection --seconds 2); LIMIT=80; SHORT=60
  COMPILED=backbone,classification,segmentation  # detection: graph breaks, minutes of compiling
fi
failed=0
step() {  # step NAME SECONDS CMD...: run CMD with a time limit, log to $OUT/NAME.log
  local name=$1 limit=$2; shift 2
  echo "== $name ($(date -u +%H:%M:%S), limit ${limit}s): $*"
  if ! timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; then
    echo "   FAILED (see $OUT/$name.log)"; failed=1
  fi
  tail -n 3 "$OUT/$name.log"
}

{ nvidia-smi || true; $PY -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.is_available())"; } \
  > "$OUT/machine.txt" 2>&1
# 1. fp32, then bf16 autocast + channels_last (what finetune does on CUDA by default), then + torch.compile
step fp32 "$LIMIT" $PY -m benchmarks --device "$DEV" "${SIZE[@]}" --json "$OUT/fp32.json"
step amp_channels_last "$LIMIT" $PY -m benchmarks --device "$DEV" --amp --channels-last "${SIZE[@]}" \
  --json "$OUT/amp_channels_last.json"
step compile $((LIMIT + 40)) $PY -m benchmarks --device "$DEV" --amp --channels-last --compile "${SIZE[@]}" --only "$COMPILED" \
  --json "$OUT/compile.json"
# 2. peak CUDA memory per task at freeze 0/3/4 (one process per setting)
step memory "$LIMIT" $PY -m benchmarks --device "$DEV" --amp --channels-last --only memory ${DRY_RUN:+--quick --memory-tasks classification} \
  --json "$OUT/memory.json"
# 3. the CUDA tests (AMP, channels_last, fit on the GPU); skipped on CPU
step gpu_tests "$SHORT" $PY -m pytest -q -p no:cacheprovider tests/test_gpu.py
# 4. NCCL: one process per GPU; with one GPU, the 1-process NCCL path and its throughput
if [[ -z "${DRY_RUN:-}" ]]; then
  step ddp_nccl "$SHORT" $PY benchmarks/bench_ddp.py --procs 1 --device cuda
fi
echo "done: results in $OUT/ (failed: $failed)"
exit $failed
