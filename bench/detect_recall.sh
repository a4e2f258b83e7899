#!/usr/bin/env bash
# Face finding on annotated whole photos, one detector after another in one run: `maskflow detect`
# with --detector ssd, ssd260 and mtcnn on the held-out fifth of SCENES (photos whose content's
# sha256, as a number, is 0 mod 5), and the Python peer (AIZOOTech's own PyTorch inference of the same
# SSD, detection only: bench/detect_ssd_py.py); then bench/scenes_recall.py: recall of faces ≥ 32 px
# and of all, precision, the SSD's own mask labels; wall time and peak RSS of each run.
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
for det in ssd ssd260 mtcnn; do
  /usr/bin/time -f "$det: wall %e s, peak RSS %M KB" \
    $bin detect --bundle "$bundle" --detector $det --out "$work/$det" --no-annotate --jsonl --device cpu --threads "$threads" "${photos[@]}" \
    >/dev/null 2>"$work/$det.err" || true
  tail -1 "$work/$det.err" >&2
done
mkdir -p "$work/python-ssd"
THREADS=$threads /usr/bin/time -f "python-ssd (detection only): wall %e s, peak RSS %M KB" \
  .venv/bin/python bench/detect_ssd_py.py "$work/python-ssd/detections.jsonl" "${photos[@]}" >/dev/null 2>"$work/py.err" || true
tail -1 "$work/py.err" >&2
python3 bench/scenes_recall.py "$scenes/annotations" "$work/ssd/detections.jsonl" "$work/ssd260/detections.jsonl" \
  "$work/mtcnn/detections.jsonl" "$work/python-ssd/detections.jsonl"
