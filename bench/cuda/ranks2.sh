#!/usr/bin/env bash
# Two GPUs: pipelines/facemask.toml's train stage with 2 data-parallel ranks (`maskflow run
# --world-size 2 --device cuda`: rank r on cuda:r) and with 1, side by side: train seconds, images/s
# and accuracy. The ranks all-reduce through c10d's gloo backend, which carries CUDA tensors through
# host memory; NCCL (ProcessGroupNCCL) is not wired into maskflow-torchext yet. Exits 3 when fewer
# than 2 NVIDIA GPUs are visible.
#
# usage: bench/cuda/ranks2.sh [DATASET]   (MASKFLOW_BIN, OUT as in bench/cuda/precision.sh)
set -uo pipefail
cd "$(dirname "$0")/../.."
. bench/cuda/gpu_env.sh
gpu_env ranks2 2 "${1:-}"
sed -e "s|^root = .*|root = \"$DATASET\"|" pipelines/facemask.toml > "$OUT/facemask.toml"
for w in 1 2; do
  /usr/bin/time -f "world $w wall %e s" "$B" run "$OUT/facemask.toml" --artifacts "$OUT/store" --until train \
    --device cuda --world-size $w > "$OUT/run-$w.log" 2> "$OUT/run-$w.err" || { echo "world $w failed:" >&2; tail -5 "$OUT/run-$w.err" >&2; continue; }
  tail -1 "$OUT/run-$w.err"
  grep -A1 '^train ' "$OUT/run-$w.log" | tail -2
done
