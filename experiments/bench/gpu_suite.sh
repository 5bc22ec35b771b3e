#!/usr/bin/env bash
# One scripted GPU session: trainer throughput (acodm vs plain HF) at 160m (acodm eager and
# compiled) and 410m, and the mixer's overhead at 410m for k = 4, 16, 64. Writes JSON to $OUT (default: results/gpu).
# Needs torch with CUDA, transformers, tokenizers, safetensors (no datasets needed).
set -euo pipefail
cd "$(dirname "$0")"
OUT=${OUT:-../results/gpu}
mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:-}:$(cd ../.. && pwd) PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
store=$(mktemp -d)/store
python -c "import sys; from pathlib import Path; from common import build_stdlib_store; \
build_stdlib_store(Path(sys.argv[1]).parent, 8.0, vocab_size=32768)" "$store"
python trainer.py --store "$store" --model 160m --seq-len 2048 --batch 16 --steps 5 --rounds 3 \
  --compile --json "$OUT/trainer_160m.json"
python trainer.py --store "$store" --model 410m --seq-len 2048 --batch 16 --steps 4 --rounds 3 \
  --json "$OUT/trainer_410m.json"
python overhead.py --store "$store" --models 410m --domains 4,16,64 --seq-len 2048 --batch 16 \
  --steps 4 --rounds 3 --json "$OUT/overhead_410m.json"
