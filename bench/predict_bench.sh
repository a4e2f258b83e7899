#!/usr/bin/env bash
# predict: maskflow (bench_predict example) vs the same TorchScript bundle driven from Python with PIL
# preprocessing, on the first N images of a folder. Both with a tuned glibc malloc and the same threads.
# usage: bench/predict_bench.sh BUNDLE_DIR FOLDER [N] [THREADS]
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLE="$1"; FOLDER="$2"; N="${3:-256}"; THREADS="${4:-2}"
. scripts/env.sh
cargo build --release --quiet -p maskflow-predict --example bench_predict
ours=$(./target/release/examples/bench_predict "$BUNDLE" "$FOLDER" "$N" "$THREADS")
peer=$(GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736 \
  .venv/bin/python bench/predict_py.py "$BUNDLE" "$FOLDER" "$N" "$THREADS")
echo "maskflow: $ours"
echo "python:   $peer"
.venv/bin/python - "$ours" "$peer" <<'PY'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"single image p50 {a['p50_ms']:.1f} ms vs {b['p50_ms']:.1f} ms; p95 {a['p95_ms']:.1f} vs {b['p95_ms']:.1f} ms")
print(f"batch throughput {a['batch_images_per_s']:.1f} vs {b['batch_images_per_s']:.1f} images/s: ratio {a['batch_images_per_s'] / b['batch_images_per_s']:.2f}x")
PY
