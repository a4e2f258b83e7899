#!/usr/bin/env bash
# Runs a command with a local S3 server (moto, 127.0.0.1, a free port, bucket `maskflow-test`)
# and MASKFLOW_TEST_S3_ENDPOINT pointing at it; stops the server when the command ends.
#   scripts/with-s3.sh cargo test --workspace
set -euo pipefail
cd "$(dirname "$0")/.."
fifo=$(mktemp -u)
mkfifo "$fifo"
.venv/bin/python scripts/s3-server.py --max-seconds 5400 maskflow-test > "$fifo" &
server=$!
trap 'kill $server 2>/dev/null || true; rm -f "$fifo"' EXIT
read -r endpoint < "$fifo"
if [[ $endpoint != http://127.0.0.1:* ]]; then
  echo "with-s3: the S3 test server did not start (scripts/bootstrap.sh --s3 installs it)" >&2
  exit 1
fi
echo "with-s3: S3 server at $endpoint" >&2
export MASKFLOW_TEST_S3_ENDPOINT=$endpoint
"$@"
