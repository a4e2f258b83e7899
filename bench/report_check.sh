#!/usr/bin/env bash
# Opens a report.html in headless Chromium (offline, from disk), screenshots it, and fails when an image
# did not load or the page's script did not run (the report marks <body data-images=N
# data-broken-images=B> once loaded). Needs Debian's `chromium` package.
set -euo pipefail
REPORT="$(realpath "$1")"
command -v chromium >/dev/null || { echo "chromium is not installed (apt-get install chromium)" >&2; exit 1; }
out="$(dirname "$REPORT")/../report-screenshot.png"
dom=$(chromium --headless --no-sandbox --disable-gpu --virtual-time-budget=10000 --dump-dom "file://$REPORT" 2>/dev/null)
chromium --headless --no-sandbox --disable-gpu --window-size=1200,5000 --screenshot="$out" "file://$REPORT" 2>/dev/null || true
images=$(grep -o 'data-images="[0-9]*"' <<<"$dom" | grep -o '[0-9]*' || true)
broken=$(grep -o 'data-broken-images="[0-9]*"' <<<"$dom" | grep -o '[0-9]*' || true)
[ -n "$images" ] || { echo "the report's load script did not run (script error?)" >&2; exit 1; }
[ "$broken" = "0" ] || { echo "$broken of $images images did not load" >&2; exit 1; }
echo "report renders in Chromium: $images images loaded, 0 broken; screenshot $out"
