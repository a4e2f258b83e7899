#!/usr/bin/env bash
# Compute benchmark: maskflow vs PyTorch eager, MobileNetV2 + fastai head, 224², batch 64, same threads.
# Both sides run with a tuned glibc malloc (maskflow sets it from inside the binary with mallopt; the
# PyTorch side gets GLIBC_TUNABLES), channels-last. Prints both JSON lines and the ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS="${1:-2}"
ITERS="${2:-6}"
. scripts/env.sh
cargo build --release --quiet -p maskflow-train --example bench_steps
ours=$(./target/release/examples/bench_steps "$THREADS" "$ITERS")
peer=$(GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736 \
  .venv/bin/python bench/train_steps.py "$THREADS" "$ITERS")
echo "maskflow: $ours"
echo "pytorch:  $peer"
.venv/bin/python - "$ours" "$peer" <<'PY'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for k in ["inference", "frozen_step", "full_step"]:
    print(f"{k:<14} maskflow {a[k]:7.1f} img/s   pytorch {b[k]:7.1f} img/s   ratio {a[k] / b[k]:.2f}x")
k = "inference_bf16"
print(f"{k:<14} maskflow {a[k]:7.1f} img/s   pytorch {b[k]:7.1f} img/s   ratio {a[k] / b[k]:.2f}x  "
      f"(maskflow bf16 / pytorch fp32: {a[k] / b['inference']:.2f}x; max |p_bf16 - p_fp32| {a['bf16_max_prob_diff']:.4f})")
PY
