#!/usr/bin/env bash
# Two maskflow binaries side by side on the work that runs in optimised Rust (not in libtorch):
# index and prep of the real dataset, then the demo pipeline (synth, index, prep, train, eval,
# export) from an empty store. Alternates them over ROUNDS rounds, prints every wall time and
# whether the two produce byte-identical artifacts (they must: a build profile is not part of any
# cache key). For a change of build settings (`just bench-profile OLD_BINARY`): OLD is a binary
# built before the change, NEW defaults to target/release/maskflow.
# Usage: bench/profile_check.sh OLD_BIN [NEW_BIN] [DATASET] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
old=$(realpath "${1:?usage: bench/profile_check.sh OLD_BIN [NEW_BIN] [DATASET] [ROUNDS]}")
new=$(realpath "${2:-target/release/maskflow}")
dataset=$(realpath "${3:-../shared/datasets/face-mask}")
rounds=${4:-2}
threads=$(nproc)
work=$(mktemp -d /tmp/maskflow-profile-check.XXXXXX)
trap 'rm -rf "$work"' EXIT

secs() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N); python3 -c "print(f'{$t1 - $t0:.2f}')"; }
# The demo pipeline with its synthetic data and store under DIR.
demo() { # BIN DIR
  mkdir -p "$2/pipelines"
  sed 's#^root = .*#root = "../data/synth-demo"#' pipelines/demo.toml > "$2/pipelines/demo.toml"
  "$1" run "$2/pipelines/demo.toml" --artifacts "$2/artifacts" --threads "$threads"
}
# The sha256 of every file of every artifact under DIR, except records of when and how long
# (run records, manifests, timings in report/summary/metrics files, the dataset's file times, the
# local hash cache keyed by mtime).
digest() { # DIR
  (cd "$1" && find . -type f ! -path './runs/*' ! -path './.cache/*' ! -name 'manifest.json' ! -name 'report.json' \
    ! -name 'summary.json' ! -name '*metrics.jsonl' ! -name 'dataset.json' ! -name '*.html' ! -name 'model_card.json' \
    -print0 | sort -z | xargs -0 sha256sum)
}

echo "old: $old"; echo "new: $new"; echo "dataset: $dataset, threads: $threads, rounds: $rounds"
"$new" stage index --dataset "$dataset" --out "$work/index" >/dev/null
for r in $(seq "$rounds"); do
  for who in old new; do
    bin=${!who}
    rm -rf "$work/idx-$who" "$work/prep-$who" "$work/demo-$who"
    sync; t_index=$(secs "$bin" stage index --dataset "$dataset" --out "$work/idx-$who")
    sync; t_prep=$(secs "$bin" stage prep --input index="$work/index" --out "$work/prep-$who")
    sync; t_demo=$(secs demo "$bin" "$work/demo-$who")
    printf 'round %s  %-3s  index %6s s  prep %6s s  demo %6s s\n' "$r" "$who" "$t_index" "$t_prep" "$t_demo"
  done
done
for what in idx prep demo; do
  sub=; [[ $what == demo ]] && sub=/artifacts
  a=$(digest "$work/$what-old$sub"); b=$(digest "$work/$what-new$sub")
  if [[ "$a" == "$b" ]]; then
    echo "$what: byte-identical artifacts ($(wc -l <<<"$b") files compared)"
  else
    echo "$what: artifacts DIFFER:"; diff <(echo "$a") <(echo "$b") | head -20
    exit 1
  fi
done
