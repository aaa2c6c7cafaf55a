#!/usr/bin/env bash
# Measurements for the README, most important first, on the shipped checkpoint.
# Usage: benchmarks/release.sh [KODAK_LIMIT] [CIFAR_LIMIT]   (from the project root, venv active;
# 0 = every image).  With every image, about 100 minutes on 2 cores.
set -uo pipefail
KL=${1:-0}
CL=${2:-0}
DATA=${DATA:-../shared/data}
mkdir -p results
export VDMCODEC_THREADS=2
log() { echo "[$(date -u +%H:%M:%S)] $*" >> results/release.log; }
limit() { if [ "$1" -gt 0 ]; then echo "--limit $1"; fi; }
log "bench kodak limit $KL"
python -m benchmarks.compare "$DATA/kodak" $(limit "$KL") --no-progress --threads 2 \
  --json results/bench_kodak.json --markdown results/bench_kodak.md --plot results/bench_kodak.png >> results/release.log 2>&1
log "bench cifar limit $CL"
python -m benchmarks.compare "$DATA/cifar10-test-200" $(limit "$CL") --no-progress --threads 2 \
  --json results/bench_cifar.json --markdown results/bench_cifar.md --plot results/bench_cifar.png >> results/release.log 2>&1
if [ "$KL" -gt 0 ]; then
  log "classic codecs on all of kodak"
  python -m benchmarks.compare "$DATA/kodak" --no-vdmc --no-progress --threads 2 \
    --json results/bench_kodak_classic.json --markdown results/bench_kodak_classic.md >> results/release.log 2>&1
fi
log "eval cifar"
vdmcodec eval --json "$DATA/cifar10-test-200" > results/eval_cifar.jsonl 2>> results/release.log
log "eval kodak"
vdmcodec eval --json "$DATA/kodak" > results/eval_kodak.jsonl 2>> results/release.log
log "tradeoff"
python -m benchmarks.tradeoff "$DATA/kodak" --crops 16 --size 128 --steps 32 64 128 --json results/tradeoff.json >> results/release.log 2>&1
log "done"
