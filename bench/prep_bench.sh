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
best_mf=0; best_pil=0; best_draft=0
max() { python3 -c "print(max($1, $2))"; }
for r in $(seq "$rounds"); do
  rm -rf "$work/mf" "$work/pil" "$work/draft"
  /usr/bin/time -f "%M" -o "$work/rss" "$bin" prep --index "$work/index" --root "$dataset" --out "$work/mf" >/dev/null
  mf=$(python3 -c "import json;print(round(json.load(open('$work/mf/report.json'))['images_per_second'],1))")
  echo "round $r  maskflow prep        $mf images/s  (peak RSS $(cat "$work/rss") KB)"
  pil=$($py bench/prep_pil.py "$work/index/index.parquet" "$dataset" "$work/pil" --workers 2 | python3 -c "import json,sys;print(round(json.load(sys.stdin)['images_per_second'],1))")
  echo "round $r  PIL + pyarrow        $pil images/s"
  draft=$($py bench/prep_pil.py "$work/index/index.parquet" "$dataset" "$work/draft" --workers 2 --draft | python3 -c "import json,sys;print(round(json.load(sys.stdin)['images_per_second'],1))")
  echo "round $r  PIL draft + pyarrow  $draft images/s"
  best_mf=$(max "$best_mf" "$mf"); best_pil=$(max "$best_pil" "$pil"); best_draft=$(max "$best_draft" "$draft")
done
python3 - "$best_mf" "$best_pil" "$best_draft" <<'PY'
import sys
mf, pil, draft = map(float, sys.argv[1:])
print(f"best: maskflow {mf:.0f}/s, PIL {pil:.0f}/s, PIL draft {draft:.0f}/s")
print(f"ratio maskflow / PIL       = {mf / pil:.2f}x")
print(f"ratio maskflow / PIL draft = {mf / draft:.2f}x")
PY
