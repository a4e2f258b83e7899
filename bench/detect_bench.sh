#!/usr/bin/env bash
# `maskflow detect` vs facenet-pytorch's MTCNN + the same TorchScript bundle driven from Python, side
# by side in one run, on N scenes of 640×480 with 1–5 real faces from DATASET (bench/detect_scenes.py).
# usage: bench/detect_bench.sh BUNDLE [DATASET] [N] [THREADS]
set -euo pipefail
cd "$(dirname "$0")/.."
bundle=${1:?usage: detect_bench.sh BUNDLE [DATASET] [N] [THREADS]}
dataset=${2:-../shared/datasets/face-mask}
n=${3:-60}
threads=${4:-2}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
py=.venv/bin/python
bin=target/release/maskflow
$py bench/detect_scenes.py "$dataset" "$work/scenes" "$n" --width 640 --height 480 --faces 1-5 --seed 11 >&2
photos=("$work"/scenes/scene-*.jpg)
# The detector's weights imported into artifacts/ once, outside the timing (a warm-up on one photo).
$bin detect --bundle "$bundle" --out "$work/warm" --no-annotate --device cpu "${photos[0]}" >/dev/null 2>&1
now() { date +%s.%N; }
t=$(now)
$bin detect --bundle "$bundle" --out "$work/mf" --no-annotate --device cpu --threads "$threads" "${photos[@]}" >/dev/null 2>"$work/mf.err"
mf_plain=$(echo "$(now) - $t" | bc)
t=$(now)
$bin detect --bundle "$bundle" --out "$work/mf-ann" --device cpu --threads "$threads" "${photos[@]}" >/dev/null 2>&1
mf_ann=$(echo "$(now) - $t" | bc)
t=$(now)
py_line=$(THREADS=$threads $py bench/detect_py.py "$bundle" "$work/py.jsonl" "${photos[@]}")
py_wall=$(echo "$(now) - $t" | bc)
$py - "$work" "$n" "$mf_plain" "$mf_ann" "$py_wall" "$py_line" <<'PY'
import json, sys
work, n, mf, mfa, pyw, line = sys.argv[1], int(sys.argv[2]), *map(float, sys.argv[3:6]), sys.argv[6]
mfr = {json.loads(l)["path"]: json.loads(l) for l in open(f"{work}/mf/detections.jsonl")}
pyr = {json.loads(l)["path"]: json.loads(l) for l in open(f"{work}/py.jsonl")}
truth = {s["file"]: s["faces"] for s in json.load(open(f"{work}/scenes/scenes.json"))}
def score(recs):
    found = hit = right = 0
    for p, r in recs.items():
        faces = r.get("faces", [])
        found += len(faces)
        for t in truth[p.split("/")[-1]]:
            x1, y1, x2, y2 = t["box"]
            inside = [f for f in faces if x1 <= (f["box"][0] + f["box"][2]) / 2 <= x2 and y1 <= (f["box"][1] + f["box"][3]) / 2 <= y2]
            if inside:
                hit += 1
                right += inside[0]["label"] == t["class"]
    return found, hit, right
pasted = sum(len(v) for v in truth.values())
same = sum(len(mfr[p].get("faces", [])) == len(pyr[p]["faces"]) for p in pyr)
for name, wall, recs in [("maskflow detect (JSON only)", mf, mfr), ("maskflow detect (+ annotated JPEGs)", mfa, None), ("facenet-pytorch + TorchScript (Python)", pyw, pyr)]:
    s = f"{name:40s} {wall:7.2f} s  {n / wall:6.2f} photos/s"
    if recs is not None:
        f, h, r = score(recs)
        s += f"  faces found {f}, pasted faces found {h}/{pasted}, labelled right {r}/{h}"
    print(s)
print(f"ratio maskflow/python wall time: {mf / pyw:.3f} (JSON only), {mfa / pyw:.3f} (with annotations); same face count on {same}/{len(pyr)} photos")
print(f"in the loop (after imports and loading): python: {line}")
print("in the loop (after loading): maskflow: " + open(f"{work}/mf.err").read().strip().splitlines()[-1])
PY
