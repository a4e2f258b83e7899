#!/usr/bin/env bash
# Peak RSS of index and prep on the dataset as it is, and on the same files listed 4× (symlinks
# under four names each): memory must not grow with the number of images.
# Usage: bench/prep_memory.sh [DATASET]
set -euo pipefail
cd "$(dirname "$0")/.."
dataset=$(realpath "${1:-../shared/datasets/face-mask}")
bin=target/release/maskflow
work=$(mktemp -d /tmp/maskflow-bench-mem.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/x4"
for class in "$dataset"/*/; do
  c=$(basename "$class")
  mkdir -p "$work/x4/$c"
  find "$class" -maxdepth 1 -type f -print0 | while IFS= read -r -d '' f; do
    for k in 1 2 3 4; do ln -s "$f" "$work/x4/$c/x$k $(basename "$f")"; done
  done
done
for name in x1 x4; do
  root=$dataset; [ "$name" = x4 ] && root=$work/x4
  /usr/bin/time -f "%M" -o "$work/rss-index" "$bin" stage index --dataset "$root" --out "$work/$name-index" >/dev/null
  /usr/bin/time -f "%M %e" -o "$work/rss-prep" "$bin" stage prep --input index="$work/$name-index" --out "$work/$name-prep" >/dev/null
  rows=$(python3 -c "import json;print(json.load(open('$work/$name-prep/report.json'))['images'])")
  read -r prep_rss prep_s < "$work/rss-prep"
  echo "$name: $rows images  index peak RSS $(( $(cat "$work/rss-index") / 1024 )) MB  prep peak RSS $(( prep_rss / 1024 )) MB  prep ${prep_s}s"
done
