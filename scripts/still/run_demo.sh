#!/usr/bin/env bash
# Offline end-to-end STILL demonstration on CPU (docs/results/still.md lists what it printed).
#
#   corpus  : Debian's Python 3.11 documentation (apt-get install python3.11-doc), HTML -> plain text
#   base    : a ~1M-parameter Llama (GQA, RoPE, SwiGLU) trained from scratch, saved as a HF checkpoint
#   STILL   : mirrorla linearize (stage 1 attention transfer + stage 2 LoRA), and the same recipe with topk=0
#   results : validation perplexity (mirrorla lm-eval) and prefill/decode cost (bench_decode.py)
#
# Every step after the base model takes a checkpoint folder, so pointing BASE at a real Llama
# checkpoint (and DATA_* at your text) runs the same commands on it.
#
#   bash scripts/still/run_demo.sh            # OUT=runs/still THREADS=1 by default
set -euo pipefail
cd "$(dirname "$0")/../.."

OUT=${OUT:-runs/still}
THREADS=${THREADS:-1}
PY=${PYTHON:-python}
MIRRORLA=${MIRRORLA:-mirrorla}
BASE=${BASE:-$OUT/base}
DATA_TRAIN=${DATA_TRAIN:-$OUT/pydoc/train.txt}
DATA_VAL=${DATA_VAL:-$OUT/pydoc/val.txt}
BLOCK=${BLOCK:-512}
STAGE1_STEPS=${STAGE1_STEPS:-30}
STAGE2_STEPS=${STAGE2_STEPS:-40}
EVAL_BLOCKS=${EVAL_BLOCKS:-100}

if [ ! -f "$DATA_TRAIN" ]; then
  [ -d /usr/share/doc/python3.11/html ] || apt-get install -y python3.11-doc
  $PY scripts/still/prepare_corpus.py --html /usr/share/doc/python3.11/html --out "$OUT/pydoc"
fi
if [ ! -f "$BASE/config.json" ]; then
  $PY scripts/still/pretrain_base.py --data "$DATA_TRAIN" --out "$BASE" --hidden 128 --vocab 2048 --layers 4 \
    --heads 4 --kv-heads 2 --context 512 --batch 8 --minutes 14 --threads "$THREADS"
fi

train=(--data "$DATA_TRAIN" --block-size "$BLOCK" --max-blocks 2000 --batch-size 2 --grad-accum 4
       --stage1-steps "$STAGE1_STEPS" --stage2-steps "$STAGE2_STEPS" --threads "$THREADS" --no-progress)
[ -f "$OUT/still/still_config.json" ] || $MIRRORLA linearize --model "$BASE" --out "$OUT/still" "${train[@]}"
[ -f "$OUT/still_topk0/still_config.json" ] || \
  $MIRRORLA linearize --model "$BASE" --out "$OUT/still_topk0" --topk 0 "${train[@]}"

ev=(--data "$DATA_VAL" --block-size "$BLOCK" --max-blocks "$EVAL_BLOCKS" --threads "$THREADS" --no-progress)
mkdir -p "$OUT/eval"
$MIRRORLA lm-eval --model "$BASE" "${ev[@]}" --json "$OUT/eval/softmax.json"
$MIRRORLA lm-eval --model "$OUT/still" "${ev[@]}" --json "$OUT/eval/still.json"
$MIRRORLA lm-eval --model "$OUT/still_topk0" "${ev[@]}" --json "$OUT/eval/still_topk0_trained.json"
$MIRRORLA lm-eval --model "$OUT/still" "${ev[@]}" --still topk=0 --json "$OUT/eval/still_topk0_dropped.json"
$MIRRORLA lm-eval --model "$BASE" "${ev[@]}" --still topk=0,use_linear=false --json "$OUT/eval/window.json"

$PY scripts/still/bench_decode.py --softmax "$BASE" --still "$OUT/still" --lengths 1024,2048,4096,8192,16384 \
  --decode 32 --threads "$THREADS" --json "$OUT/bench.json" --png "$OUT/decode_cost.png"
