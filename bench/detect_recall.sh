#!/usr/bin/env bash
# Face finding on annotated whole photos, one run after another: `maskflow detect` on the held-out
# fifth of SCENES (photos whose content's sha256, as a number, is 0 mod 5) with the SSD and its own
# labels (like for like with the Python peer), and with ssd, ssd260, mtcnn and the bundle's own
# fine-tuned detector labelled by the bundle's classifier; the Python peer (AIZOOTech's own PyTorch
# inference of the same SSD: bench/detect_ssd_py.py); then bench/scenes_recall.py: recall of faces
# ≥ 32 px and of all, precision, the SSD's own mask labels; wall time and peak RSS of each run.
# (The deteval stage is the full measurement, on its own split: docs/DETECT.md.)
# usage: bench/detect_recall.sh BUNDLE [SCENES] [THREADS]
set -euo pipefail
cd "$(dirname "$0")/.."
bundle=${1:?usage: detect_recall.sh BUNDLE [SCENES] [THREADS]}
scenes=${2:-../shared/datasets/face-mask-scenes}
threads=${3:-2}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
bin=target/release/maskflow
mapfile -t photos < <(python3 - "$scenes/images" <<'PY'
import hashlib, os, sys
d = sys.argv[1]
for f in sorted(os.listdir(d)):
    if int(hashlib.sha256(open(os.path.join(d, f), "rb").read()).hexdigest(), 16) % 5 == 0:
        print(os.path.join(d, f))
PY
)
echo "${#photos[@]} held-out photos of $(ls "$scenes/images" | wc -l)" >&2
# Weights imported into artifacts/ once, outside the timing.
for det in ssd ssd260 mtcnn; do
  $bin detect --bundle "$bundle" --detector $det --out "$work/warm" --no-annotate --device cpu "${photos[0]}" >/dev/null 2>&1
done
# name | detect's flags. ssd-own is the like-for-like run against the Python SSD (the SSD's own labels,
# no classifier); the others label every face with the bundle's classifier. `bundle` is the bundle's
# own fine-tuned detector (dettrain), when it ships one.
runs=("ssd-own|--detector ssd --labels detector" "ssd|--detector ssd" "ssd260|--detector ssd260" "mtcnn|--detector mtcnn")
if grep -q '"detector": {' "$bundle/model_card.json"; then runs+=("bundle|"); fi
names=()
for r in "${runs[@]}"; do
  name=${r%%|*}; flags=${r#*|}
  # shellcheck disable=SC2086
  /usr/bin/time -f "$name: wall %e s, peak RSS %M KB" \
    $bin detect --bundle "$bundle" $flags --out "$work/$name" --no-annotate --jsonl --device cpu --threads "$threads" "${photos[@]}" \
    >/dev/null 2>"$work/$name.err" || true
  tail -1 "$work/$name.err" >&2
  names+=("$work/$name/detections.jsonl")
done
mkdir -p "$work/python-ssd"
THREADS=$threads /usr/bin/time -f "python-ssd (detection and its own labels): wall %e s, peak RSS %M KB" \
  .venv/bin/python bench/detect_ssd_py.py "$work/python-ssd/detections.jsonl" "${photos[@]}" >/dev/null 2>"$work/py.err" || true
tail -1 "$work/py.err" >&2
python3 bench/scenes_recall.py "$scenes/annotations" "${names[@]}" "$work/python-ssd/detections.jsonl"
