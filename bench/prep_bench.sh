#!/usr/bin/env bash
# Side-by-side prep benchmark: maskflow prep vs PIL + pyarrow (plain, and with JPEG draft mode),
# same files, same size (224), same resize (centre square, one bilinear pass), same compression
# (snappy), 2 workers each. Alternates the contenders over ROUNDS rounds; prints every measurement
# and the best-of ratios. Usage: bench/prep_bench.sh [DATASET] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
dataset=${1:-../shared/datasets/face-mask}
rounds=${2:-2}
bin=target/release/maskflow
py=.venv/bin/python
work=$(mktemp -d /tmp/maskflow-bench-prep.XXXXXX)
trap 'rm -rf "$work"' EXIT

echo "dataset: $dataset ($(find "$dataset" -type f | wc -l) files), cpus: $(nproc)"
/usr/bin/time -f "index: %e s wall, peak RSS %M KB" "$bin" index --root "$dataset" --out "$work/index" >/dev/null
printf '[dataset]\nroot = "unused"\n[prep]\njpeg_draft = true\n' > "$work/draft.toml"
best_mf=0; best_mffull=0; best_pil=0; best_draft=0
max() { python3 -c "print(max($1, $2))"; }
for r in $(seq "$rounds"); do
  rm -rf "$work/mf" "$work/mffull" "$work/pil" "$work/draft"
  /usr/bin/time -f "%M" -o "$work/rss" "$bin" prep --index "$work/index" --root "$dataset" --out "$work/mf" >/dev/null
  mf=$(python3 -c "import json;print(round(json.load(open('$work/mf/report.json'))['images_per_second'],1))")
  echo "round $r  maskflow prep (default: full decode) $mf images/s  (peak RSS $(cat "$work/rss") KB)"
  "$bin" prep --index "$work/index" --root "$dataset" --out "$work/mffull" --pipeline "$work/draft.toml" >/dev/null
  mffull=$(python3 -c "import json;print(round(json.load(open('$work/mffull/report.json'))['images_per_second'],1))")
  echo "round $r  maskflow prep (jpeg_draft)          $mffull images/s"
  pil=$($py bench/prep_pil.py "$work/index/index.parquet" "$dataset" "$work/pil" --workers 2 | python3 -c "import json,sys;print(round(json.load(sys.stdin)['images_per_second'],1))")
  echo "round $r  PIL + pyarrow        $pil images/s"
  draft=$($py bench/prep_pil.py "$work/index/index.parquet" "$dataset" "$work/draft" --workers 2 --draft | python3 -c "import json,sys;print(round(json.load(sys.stdin)['images_per_second'],1))")
  echo "round $r  PIL draft + pyarrow  $draft images/s"
  best_mf=$(max "$best_mf" "$mf"); best_mffull=$(max "$best_mffull" "$mffull"); best_pil=$(max "$best_pil" "$pil"); best_draft=$(max "$best_draft" "$draft")
done
python3 - "$best_mf" "$best_mffull" "$best_pil" "$best_draft" <<'PY'
import sys
mf, mffull, pil, draft = map(float, sys.argv[1:])
mfdraft = mffull
print(f"best: maskflow {mf:.0f}/s, maskflow jpeg_draft {mfdraft:.0f}/s, PIL {pil:.0f}/s, PIL draft {draft:.0f}/s")
print(f"ratio maskflow / PIL (same work: full decode)   = {mf / pil:.2f}x")
print(f"ratio maskflow / PIL draft (PIL's fastest)      = {mf / draft:.2f}x")
print(f"ratio maskflow jpeg_draft / PIL draft           = {mfdraft / draft:.2f}x")
PY
# Quality of draft decoding: the same images, draft vs full decode, after the same resize.
$py bench/compare_shards.py "$work/mffull" "$work/mf"
