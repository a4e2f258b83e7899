#!/usr/bin/env bash
# End to end on the real data, one after the other on the same machine:
#   1. maskflow's whole pipeline (index → prep → train → eval with robustness → export) from an empty store;
#   2. the plain-PyTorch replica of the notebook (3 frozen + 3 full epochs) trained and validated on
#      maskflow's content-hashed split (REPLICA_SPLIT = the index artifact just built);
#   3. with BASELINE=1, pipelines/facemask.toml's train stage again without the recipe's additions
#      (damage augmentations, fixed_body_copies), index and prep cached: the train-time cost of the recipe.
# Prints wall time and peak RSS of each (GNU time) and the ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
DATASET="${1:-../shared/datasets/face-mask}"
store=$(mktemp -d)
trap 'rm -rf "$store"' EXIT
wall() { sed -n 's/.* wall \([0-9.]*\) s.*/\1/p' "$1"; }

/usr/bin/time -f "maskflow wall %e s, peak RSS %M KB" ./target/release/maskflow run pipelines/facemask.toml \
  --artifacts "$store" 2> >(tee "$store/maskflow.time" >&2) | tee "$store/maskflow.log"
index=$(find "$store/index" -name index.parquet | head -1)

GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736 REPLICA_SPLIT="$index" \
  /usr/bin/time -f "replica wall %e s, peak RSS %M KB" .venv/bin/python bench/replica_notebook.py "$DATASET" 3 3 \
  2> >(tee "$store/replica.time" >&2)

echo "maskflow / replica wall: $(awk "BEGIN{printf \"%.3f\", $(wall "$store/maskflow.time") / $(wall "$store/replica.time")}")"

if [ "${BASELINE:-0}" = 1 ]; then
  root=$(cd pipelines && realpath "$(sed -n 's/^root = "\(.*\)"/\1/p' facemask.toml)")
  sed -e '/^\(p_downscale\|min_face\|p_blur\|p_noise\|max_noise\|p_jpeg\|min_jpeg_quality\|fixed_body_copies\) *=/d' \
      -e "s|^root = .*|root = \"$root\"|" pipelines/facemask.toml > "$store/baseline.toml"
  /usr/bin/time -f "baseline wall %e s, peak RSS %M KB" ./target/release/maskflow run "$store/baseline.toml" \
    --artifacts "$store" --until train 2> >(tee "$store/baseline.time" >&2) | tee "$store/baseline.log"
  train() { sed -n 's/^train *built in \([0-9.]*\)s.*/\1/p' "$1"; }
  echo "train stage, recipe / baseline: $(train "$store/maskflow.log") s / $(train "$store/baseline.log") s = $(awk "BEGIN{printf \"%.3f\", $(train "$store/maskflow.log") / $(train "$store/baseline.log")}")"
fi
