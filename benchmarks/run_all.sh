#!/bin/bash
# Every benchmark of benchmarks/README.md's tables, in one go, on a quiet machine: about 30
# minutes on the 2-core CPU, the headline figures first (the first 6 commands take about
# 12 minutes). Each script prints its table; the rows also go to $OUT/<name>.jsonl
# (default benchmarks/results/<UTC date>/).
#   bash benchmarks/run_all.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results/$(date -u +%Y-%m-%d)}
mkdir -p "$OUT"
run() {  # name, then the module's arguments
  local name=$1; shift
  echo "== python -m $* ($(date -u +%H:%M:%S))"
  python -m "$@" --json_out="$OUT/$name.jsonl"
}
{ lscpu | grep -E "Model name|^CPU\(s\)" || true
  python -c "import jax, jaxlib; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__)"
  python -c "import torch; print('torch', torch.__version__)" || true
} > "$OUT/machine.txt"
run peak benchmarks.peak --torch --repeats=5
run vs_torch_2 benchmarks.hourglass_vs_torch --stacks=2 --repeats=3
run train_step_cpu benchmarks.train_step --repeats=5 \
    --configs=hourglass/quickstart,hourglass/cpu,cpm/cpu,deeppose/cpu
run loop_quickstart benchmarks.loop --configs=hourglass/quickstart --dataset=synthetic \
    --batch=16 --steps=20 --repeats=3
run loop_lsp benchmarks.loop --configs=hourglass/cpu --dataset=lsp --batch=16 --steps=10 \
    --repeats=3
run inference_cpu benchmarks.inference --repeats=5 \
    --configs=hourglass/quickstart,hourglass/cpu,cpm/cpu,deeppose/cpu
run vs_torch_8 benchmarks.hourglass_vs_torch --stacks=8 --repeats=3
run train_step_paper benchmarks.train_step --repeats=2 --batch=2 \
    --configs=hourglass/paper,cpm/paper,deeppose/paper
run inference_paper benchmarks.inference --repeats=3 --batches=1 \
    --configs=hourglass/paper,cpm/paper,deeppose/paper
# Attempts at moving XLA's convolutions (README "Attempts"): each variant its own process.
run peak_variants benchmarks.peak --repeats=3 \
    --variants=jhpe,xla,onednn_conv,xnn_conv,vec512,no_libs
run loop_lsp_others benchmarks.loop --configs=cpm/cpu,deeppose/cpu --dataset=lsp \
    --batch=16 --steps=8 --repeats=2
echo "== done ($(date -u +%H:%M:%S)): $OUT"
