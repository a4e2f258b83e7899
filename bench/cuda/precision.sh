#!/usr/bin/env bash
# One GPU: pipelines/facemask.toml's train and eval stages in fp32 and in bf16-mixed, side by side in
# one run: training images/s per epoch, peak GPU memory (nvidia-smi, sampled every 0.5 s), clean and
# mean-corruption accuracy. Exits 3 with a message when no NVIDIA GPU is visible.
#
# usage: bench/cuda/precision.sh [DATASET]   (default ../shared/datasets/face-mask)
#   MASKFLOW_BIN: the binary (default .devcheck/maskflow from bench/cuda/build_for_device.sh, else
#   target/release/maskflow); OUT: where the logs and a summary go (default /tmp/maskflow-precision).
set -uo pipefail
cd "$(dirname "$0")/../.."
. bench/cuda/gpu_env.sh
gpu_env precision 1 "${1:-}"
for p in fp32 bf16-mixed; do
  pipe="$OUT/facemask-$p.toml"
  # The pipeline as it is, its dataset made absolute, the precision set; index → prep → train → eval.
  sed -e "s|^root = .*|root = \"$DATASET\"|" -e "/^\[train\]$/a precision = \"$p\"" pipelines/facemask.toml > "$pipe"
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 > "$OUT/mem-$p.txt" &
  sampler=$!
  /usr/bin/time -f "$p wall %e s, peak RSS %M KB" "$B" run "$pipe" --artifacts "$OUT/store" --until eval --device cuda \
    > "$OUT/run-$p.log" 2> "$OUT/run-$p.err"
  rc=$?
  kill $sampler 2>/dev/null
  tail -1 "$OUT/run-$p.err"
  [[ $rc == 0 ]] || { echo "$p: maskflow failed (rc $rc); see $OUT/run-$p.err" >&2; tail -5 "$OUT/run-$p.err" >&2; continue; }
  train=$(sed -n 's/^train *\(built\|rebuilt\|cached\).* \(\/.*\/train\/[0-9a-f]*\)$/\2/p' "$OUT/run-$p.log" | tail -1)
  eval=$(sed -n 's/^eval *\(built\|rebuilt\|cached\).* \(\/.*\/eval\/[0-9a-f]*\)$/\2/p' "$OUT/run-$p.log" | tail -1)
  python3 - "$p" "$train/metrics.jsonl" "$eval/metrics.json" "$OUT/mem-$p.txt" <<'PY' | tee -a "$OUT/summary.txt"
import json, sys
p, metrics, ev, mem = sys.argv[1:]
epochs = [json.loads(l) for l in open(metrics)]
m = json.load(open(ev))
used = [int(x) for x in open(mem).read().split() if x.strip().isdigit()]
print(json.dumps({
    "precision": p,
    "images_per_second": {f"{e['phase']} {e['epoch']}": round(e["images_per_second"], 1) for e in epochs},
    "peak_gpu_memory_mib": max(used) if used else None,
    "accuracy": m.get("accuracy"),
    "mean_corruption_accuracy": (m.get("robustness") or {}).get("mean_corruption_accuracy"),
}))
PY
done
