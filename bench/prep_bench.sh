#!/usr/bin/env bash
# Side-by-side prep benchmark: maskflow prep vs PIL + pyarrow, same files, same size (224), same
# resize (centre square, one bilinear pass), same compression (maskflow's default, none), 2 workers
# each; each decoding JPEGs both ways: at full size, and at a reduced DCT scale (maskflow's default
# `jpeg_draft`, PIL's `Image.draft`). Alternates the contenders over ROUNDS rounds; prints every
# measurement and the best-of ratios. Each contender starts after a `sync`, so none pays for the
# previous one's dirty pages. Usage: bench/prep_bench.sh [DATASET] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
dataset=${1:-../shared/datasets/face-mask}
rounds=${2:-2}
bin=target/release/maskflow
py=.venv/bin/python
work=$(mktemp -d /tmp/maskflow-bench-prep.XXXXXX)
trap 'rm -rf "$work"' EXIT

echo "dataset: $dataset ($(find "$dataset" -type f | wc -l) files), cpus: $(nproc)"
/usr/bin/time -f "index: %e s wall, peak RSS %M KB" "$bin" stage index --dataset "$dataset" --out "$work/index" >/dev/null
printf 'jpeg_draft = false\n' > "$work/full.toml"
rate() { python3 -c "import json,sys;print(round(json.load(open(sys.argv[1]))['images_per_second'],1))" "$1"; }
rate_stdin() { python3 -c "import json,sys;print(round(json.load(sys.stdin)['images_per_second'],1))"; }
best() { python3 -c "print(max(float('$1'), float('$2')))"; }
b_mf=0; b_mffull=0; b_pil=0; b_pildraft=0
for r in $(seq "$rounds"); do
  rm -rf "$work/mf" "$work/mffull" "$work/pil" "$work/pildraft"
  sync; /usr/bin/time -f "%M" -o "$work/rss" "$bin" stage prep --input index="$work/index" --out "$work/mf" >/dev/null
  mf=$(rate "$work/mf/report.json")
  echo "round $r  maskflow prep (default: jpeg_draft)   $mf images/s  (peak RSS $(cat "$work/rss") KB)"
  sync; "$bin" stage prep --input index="$work/index" --out "$work/mffull" --params "$work/full.toml" >/dev/null
  mffull=$(rate "$work/mffull/report.json")
  echo "round $r  maskflow prep (jpeg_draft = false)    $mffull images/s"
  sync; pil=$($py bench/prep_pil.py "$work/index/index.parquet" "$dataset" "$work/pil" --workers 2 | rate_stdin)
  echo "round $r  PIL + pyarrow (full decode)           $pil images/s"
  sync; pildraft=$($py bench/prep_pil.py "$work/index/index.parquet" "$dataset" "$work/pildraft" --workers 2 --draft | rate_stdin)
  echo "round $r  PIL + pyarrow (draft mode)            $pildraft images/s"
  b_mf=$(best "$b_mf" "$mf"); b_mffull=$(best "$b_mffull" "$mffull"); b_pil=$(best "$b_pil" "$pil"); b_pildraft=$(best "$b_pildraft" "$pildraft")
done
python3 - "$b_mf" "$b_mffull" "$b_pil" "$b_pildraft" <<'PY'
import sys
mf, mffull, pil, pildraft = map(float, sys.argv[1:])
print(f"best: maskflow {mf:.0f}/s (full decode {mffull:.0f}/s), PIL {pil:.0f}/s (draft {pildraft:.0f}/s)")
print(f"ratio maskflow default / PIL default (both as shipped)   = {mf / pil:.2f}x")
print(f"ratio same decode, full size: maskflow / PIL             = {mffull / pil:.2f}x")
print(f"ratio same decode, draft:     maskflow / PIL             = {mf / pildraft:.2f}x")
PY
# Quality of draft decoding (the same images, draft vs full decode, after the same resize), and how
# close maskflow's pixels are to PIL's (same decoder, libjpeg-turbo; different resize code).
$py bench/compare_shards.py "$work/mf" "$work/mffull" "maskflow draft vs full decode"
$py bench/compare_shards.py "$work/mffull" "$work/pil" "maskflow vs PIL, full decode"
$py bench/compare_shards.py "$work/mf" "$work/pildraft" "maskflow vs PIL, draft"
