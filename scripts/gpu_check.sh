#!/usr/bin/env bash
# The GPU checks in one run (about 5-8 minutes on one recent GPU): the CUDA tests, then the attention
# benchmark on CUDA (CUDA-event timing, effective bandwidth, SDPA with its backend named, eager and
# compiled MirrorLA side by side, fp32 and bf16 autocast). Results go to ${OUT:-runs/gpu}.
#
#   bash scripts/gpu_check.sh            # from the repository root, in the project's environment
set -euo pipefail
OUT="${OUT:-runs/gpu}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python -m pytest -q tests/test_cuda.py tests/test_bench_memory.py -p no:cacheprovider 2>&1 | tee "$OUT/tests.txt"
common=(--device cuda --threads 4 --repeats 10 --warmup 3 --no-progress --max-case-seconds 60)
mirrorla bench ops "${common[@]}" --sizes 4096,16384,65536 \
    --methods linear_relu,mirror,mirror_block,pola,flatten,nala,l2vit_lga,softmax --compiled mirror,linear_relu \
    --out "$OUT/ops-fp32" 2>&1 | tail -n 60 | tee "$OUT/ops-fp32.txt"
mirrorla bench ops "${common[@]}" --sizes 16384,65536 --dtype bfloat16 --no-core \
    --methods linear_relu,mirror,pola,flatten,nala,l2vit_lga,softmax --out "$OUT/ops-bf16" 2>&1 | tail -n 40 \
    | tee "$OUT/ops-bf16.txt"
echo "wrote $OUT"
