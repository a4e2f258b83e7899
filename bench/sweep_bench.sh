#!/usr/bin/env bash
# A sweep's trainings one at a time vs in parallel (`maskflow run --sweep NAME --jobs N`): the
# pipeline's index + prep are built once into a seed store, copied into a fresh store per setting
# (so only the sweep's own instances are timed), then the sweep runs with --jobs 1 × all threads
# and --jobs N × 1 thread (each instance then builds in its own process). Prints wall, the largest
# single process's peak RSS (GNU time's %M; parallel builds add up), and every point's weights, to
# see which settings give byte-identical ones (keys are equal by construction; bytes need the same
# arithmetic: the same thread count).
#   bench/sweep_bench.sh [PIPELINE] [SWEEP] [THREADS]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/maskflow
PIPE=${1:-pipelines/demo.toml}
SWEEP=${2:-lr}
THREADS=${3:-$(nproc)}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$BIN" run "$PIPE" --until prep --artifacts "$work/seed" --threads "$THREADS" >/dev/null
points=$("$BIN" graph "$PIPE" --sweep "$SWEEP" --artifacts "$work/seed" | grep -c "^train\.$SWEEP-" || true)
echo "sweep $SWEEP of $PIPE: $points points; $(nproc) cores; index + prep cached"
printf '%-22s %8s %10s  %s\n' setting wall_s max_rss_mb "weights (sha256 of each point's model.safetensors, first 8)"
declare -A first
for cfg in "1 $THREADS" "1 1" "2 1" "$points 1"; do
  read -r jobs threads <<<"$cfg"
  store="$work/j${jobs}t${threads}"
  [[ -d $store ]] && continue
  cp -a "$work/seed" "$store"
  /usr/bin/time -f "%e %M" -o "$work/time" "$BIN" run "$PIPE" --sweep "$SWEEP" --jobs "$jobs" --threads "$threads" --artifacts "$store" >"$work/log" 2>&1 ||
    { cat "$work/log"; exit 1; }
  read -r wall rss <"$work/time"
  sums=""
  for i in $(seq 1 "$points"); do
    key=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(next(s["key"] for s in r["stages"] if s["stage"]==sys.argv[2]))' "$(ls "$store"/runs/*/latest.json)" "train.$SWEEP-$i")
    sums+="$(sha256sum "$store/train/$key/model.safetensors" | cut -c1-8) "
  done
  printf '%-22s %8.1f %10d  %s\n' "--jobs $jobs --threads $threads" "$wall" "$((rss / 1024))" "$sums"
done
