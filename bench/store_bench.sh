#!/usr/bin/env bash
# Shared-store transfer benchmark: the real dataset's prep artifact pushed to / pulled from a local
# S3 server (moto on 127.0.0.1) by maskflow, and the same files uploaded / downloaded by boto3 the
# way `aws s3 cp --recursive` does (bench/store_boto3.py), alternating over ROUNDS rounds into
# fresh prefixes. maskflow's figures include blake3 verification of every blob it downloads;
# boto3 checks nothing. Usage: bench/store_bench.sh [DATASET] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
dataset=$(realpath "${1:-../shared/datasets/face-mask}")
rounds=${2:-3}
bin=$PWD/target/release/maskflow
py=$PWD/.venv/bin/python
work=$(mktemp -d /tmp/maskflow-bench-store.XXXXXX)
fifo=$work/endpoint
mkfifo "$fifo"
$py scripts/s3-server.py --max-seconds 3600 bench > "$fifo" &
server=$!
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
read -r endpoint < "$fifo"
export AWS_ENDPOINT_URL=$endpoint AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1

mkdir -p "$work/p"
sed "s|^root = .*|root = \"$dataset\"|" pipelines/facemask.toml > "$work/p/facemask.toml"
"$bin" run "$work/p/facemask.toml" --until prep --artifacts "$work/a" >/dev/null
prep=$(ls -d "$work"/a/prep/*/ | head -1)
echo "prep artifact: $(du -sb "$prep" | cut -f1) bytes in $(find "$prep" -type f | wc -l) files; S3 server $endpoint; cpus $(nproc)"

line() { grep -E "^prep " | sed 's/^prep *key [0-9a-f]* *//'; }
now() { date +%s.%N; }
wall() { python3 -c "import sys;print(f'{float(sys.argv[2])-float(sys.argv[1]):.2f}')" "$1" "$(now)"; }
for r in $(seq "$rounds"); do
  sync
  t=$(now); push=$("$bin" push "$work/p/facemask.toml" --until prep --store "s3://bench/mf-$r" --artifacts "$work/a" | line)
  echo "round $r  maskflow push   $push  [command wall $(wall "$t") s, incl. local verification]"
  sync
  t=$(now); pull=$("$bin" pull "$work/p/facemask.toml" --until prep --store "s3://bench/mf-$r" --artifacts "$work/b-$r" | line)
  echo "round $r  maskflow pull   $pull  [command wall $(wall "$t") s]"
  rm -rf "$work/b-$r"
  sync
  t=$(now); up=$($py bench/store_boto3.py up "$endpoint" bench "boto-$r" "$prep")
  echo "round $r  boto3 upload    $up  [command wall $(wall "$t") s]"
  sync
  t=$(now); down=$($py bench/store_boto3.py down "$endpoint" bench "boto-$r" "$work/c-$r")
  echo "round $r  boto3 download  $down  [command wall $(wall "$t") s]"
  rm -rf "$work/c-$r"
done
