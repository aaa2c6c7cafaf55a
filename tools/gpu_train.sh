#!/usr/bin/env bash
# One command for a lent GPU (or any machine): continue the shipped model for a few minutes
# (bf16 autocast on CUDA, the noise schedule frozen), then export it as a checkpoint into
# $OUT, with its held-out evaluation, ready to replace checkpoints/default.pt.
#
#   OUT=/some/folder DATA=../shared/data/train MINUTES=7.5 bash tools/gpu_train.sh
#
# Needs only torch, numpy and Pillow (nothing is installed).  EXTRA passes more options to
# vdmcodec.train; the run folder ($OUT/run) keeps state.pt, so RESUME=$OUT/run/state.pt
# continues a run instead of the shipped model.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu}
DATA=${DATA:-../shared/data/train}
MINUTES=${MINUTES:-7.5}
RESUME=${RESUME:-checkpoints/default.pt}
BATCH=${BATCH:-64}
MODEL_ID=${MODEL_ID:-vdmc-rgb-t64-gpu}
mkdir -p "$OUT"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
python -m vdmcodec.train "$DATA" --out "$OUT/run" --resume "$RESUME" --schedule-lr-mult 0 \
    --minutes "$MINUTES" --batch "$BATCH" --lr 4e-4 --eval-minutes 3 --ckpt-minutes 2 \
    --model-id "$MODEL_ID" ${EXTRA:-}
python -m vdmcodec.export "$OUT/run/model.pt" "$OUT/default.pt" --model-id "$MODEL_ID" \
    --note "tools/gpu_train.sh: $MINUTES min from $RESUME, batch $BATCH"
ls -l "$OUT"
