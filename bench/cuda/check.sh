#!/usr/bin/env bash
# Device check (see bench/cuda/build_for_device.sh): maskflow built against the device's torch
# headers, run on its GPU: both frozen modes end to end, cached rerun, predict on cuda vs cpu.
set -uo pipefail
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/torch/lib:$PWD/.devcheck/lib
B=$PWD/.devcheck/maskflow
nvidia-smi -L
$B info
echo "== faithful pipeline on cuda"
/usr/bin/time -f "wall %e s, peak RSS %M KB" $B run .devcheck/gpu.toml --device cuda 2>&1 | grep -v "^\s*$" | tail -40
echo "== rerun: cached"
$B run .devcheck/gpu.toml --device cuda 2>&1 | tail -8
echo "== fixed_body pipeline on cuda"
/usr/bin/time -f "wall %e s, peak RSS %M KB" $B run .devcheck/gpu-fixed.toml --device cuda 2>&1 | grep -v "^\s*$" | tail -25
for d in artifacts/train/*/; do echo "$d"; cat "$d/metrics.jsonl"; cp "$d/metrics.jsonl" "$OUT/metrics-$(basename $d).jsonl"; done
bundle=$(ls -d artifacts/export/*/ | head -1)
echo "== predict with $bundle on cuda vs cpu"
$B predict --bundle "$bundle" --format csv --device cuda data/synth-gpu > $OUT/pred_cuda.csv; echo "rc $?"
$B predict --bundle "$bundle" --format csv --device cpu data/synth-gpu > $OUT/pred_cpu.csv; echo "rc $?"
python3 - "$OUT/pred_cuda.csv" "$OUT/pred_cpu.csv" <<'PY'
import csv, sys
a = list(csv.reader(open(sys.argv[1]))); b = list(csv.reader(open(sys.argv[2])))
print("header", a[0]); assert a[0] == b[0] and len(a) == len(b), "different shapes"
d = 0.0; same = 0
for ra, rb in zip(a[1:], b[1:]):
    assert ra[0] == rb[0]
    same += ra[1] == rb[1]
    if ra[2] == "" or rb[2] == "":
        assert ra[2:] == rb[2:], (ra, rb)  # a refused file: the same reason on both
        continue
    d = max(d, max(abs(float(x) - float(y)) for x, y in zip(ra[2:4], rb[2:4])))
print(f"rows {len(a)-1}, same label {same}, max |p_cuda - p_cpu| = {d:.3g}")
PY
for d in artifacts/eval/*/; do echo "$d"; python3 -c "import json,sys;m=json.load(open('$d/metrics.json'));print({k:m[k] for k in m if k in ('accuracy','log_loss','confusion_matrix','roc_auc')})"; done
echo "== cuda:1 must fail clearly"
$B run .devcheck/gpu.toml --device cuda:1 2>&1 | tail -2
