#!/usr/bin/env bash
# Which detector finds a face in the face-mask dataset's pictures (what the faces stage needs: one
# face per labelled picture): N pictures per class sampled with a fixed seed, `maskflow detect` with
# --detector ssd and mtcnn, the pictures with at least one face found, per class; wall and peak RSS.
# usage: bench/faces_found.sh BUNDLE [DATASET] [N] [THREADS]
set -euo pipefail
cd "$(dirname "$0")/.."
bundle=${1:?usage: faces_found.sh BUNDLE [DATASET] [N] [THREADS]}
dataset=${2:-../shared/datasets/face-mask}
n=${3:-150}
threads=${4:-2}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
bin=target/release/maskflow
for class in with_mask without_mask; do
  python3 - "$dataset/$class" "$n" > "$work/$class.list" <<'PY'
import os, random, sys
d, n = sys.argv[1], int(sys.argv[2])
files = sorted(f for f in os.listdir(d) if not f.startswith("."))
for f in random.Random(0).sample(files, n):
    print(os.path.join(d, f))
PY
done
for det in ssd mtcnn; do
  for class in with_mask without_mask; do
    mapfile -t photos < "$work/$class.list"
    /usr/bin/time -f "%e %M" -o "$work/time" $bin detect --bundle "$bundle" --detector $det --out "$work/$det-$class" \
      --no-annotate --jsonl --device cpu --threads "$threads" "${photos[@]}" > "$work/$det-$class.jsonl" 2>/dev/null || true
    python3 - "$work/$det-$class.jsonl" "$det" "$class" "$(cat "$work/time")" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
ok = [r for r in rows if "faces" in r]
found = sum(1 for r in ok if r["faces"])
wall, rss = sys.argv[4].split()
print(f"{sys.argv[2]:6} {sys.argv[3]:13} a face found in {found} of {len(ok)} decoded pictures ({len(rows) - len(ok)} failed)  wall {wall} s  peak RSS {int(rss) // 1024} MB")
PY
  done
done
