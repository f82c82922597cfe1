#!/usr/bin/env bash
# On the GPU host: run everything scripts/gpu-build.sh collected in .carry/bin, then the
# side-by-side benchmark against PyTorch. Usage: scripts/gpu-run.sh [tests|examples|bench|all]
# Data the examples need travels in .carry/data (digits.csv, the chat model).
set -uo pipefail
cd "$(dirname "$0")/.."
bin=.carry/bin
what=${1:-all}
status=0
if [ "$what" = tests ] || [ "$what" = all ]; then
  for t in "$bin"/test-*; do
    echo "== $t"
    "$t" --test-threads 1 2>&1 | grep -E "^test |test result|panicked|failed|FAILED|^  " || status=1
  done
fi
if [ "$what" = examples ] || [ "$what" = all ]; then
  echo "== train_digits --device cuda"
  "$bin/train_digits" --device cuda --data .carry/data/digits.csv --out /tmp/digits-cuda 2>&1 | tail -3
  if [ -f .carry/data/model.gguf ]; then
    echo "== chat --device cuda"
    "$bin/chat" --device cuda --model .carry/data/model.gguf --temperature 0 --max-tokens 40 \
      --message "What is the capital of France?" --stats-json 2>&1 | tail -4
  fi
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
  python3 benches/gpu_vs_torch.py --bin "$bin/gpu_bench"
fi
exit $status
