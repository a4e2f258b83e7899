#!/usr/bin/env bash
# End to end on the real data: maskflow's whole pipeline (index → prep → train → eval → export) from an
# empty store, then the plain-PyTorch replica of the notebook (3 frozen + 3 full epochs), one after the
# other on the same machine. Prints wall time and peak RSS of each (GNU time) and the ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
DATASET="${1:-../shared/datasets/face-mask}"
store=$(mktemp -d)
trap 'rm -rf "$store"' EXIT
/usr/bin/time -f "maskflow wall %e s, peak RSS %M KB" ./target/release/maskflow run pipelines/facemask.toml \
  --artifacts "$store" 2> >(tee "$store/maskflow.time" >&2)
GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736 \
  /usr/bin/time -f "replica wall %e s, peak RSS %M KB" .venv/bin/python bench/replica_notebook.py "$DATASET" 3 3 \
  2> >(tee "$store/replica.time" >&2)
