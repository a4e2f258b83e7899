#!/usr/bin/env bash
# Opens a page maskflow wrote (report.html, runs.html, review.html) in headless Chromium, offline
# from disk; screenshots it; fails when an image did not load or the page's script did not run (the
# pages mark <body data-images=N data-broken-images=B> once loaded). Needs Debian's `chromium`
# (`scripts/bootstrap.sh --chromium` installs it).
#   bench/report_check.sh PAGE [SCREENSHOT.png] [WIDTH,HEIGHT]
set -euo pipefail
PAGE="$(realpath "$1")"
out="${2:-$(dirname "$PAGE")/$(basename "$PAGE" .html)-screenshot.png}"
size="${3:-1200,5000}"
command -v chromium >/dev/null || { echo "chromium is not installed (scripts/bootstrap.sh --chromium)" >&2; exit 1; }
flags=(--headless --no-sandbox --disable-gpu --hide-scrollbars)
dom=$(chromium "${flags[@]}" --virtual-time-budget=10000 --dump-dom "file://$PAGE" 2>/dev/null)
chromium "${flags[@]}" --window-size="$size" --screenshot="$out" "file://$PAGE" 2>/dev/null || true
images=$(grep -o 'data-images="[0-9]*"' <<<"$dom" | grep -o '[0-9]*' || true)
broken=$(grep -o 'data-broken-images="[0-9]*"' <<<"$dom" | grep -o '[0-9]*' || true)
[ -n "$images" ] || { echo "$PAGE: the page's load script did not run (script error?)" >&2; exit 1; }
[ "$broken" = "0" ] || { echo "$PAGE: $broken of $images images did not load" >&2; exit 1; }
[ -s "$out" ] || { echo "$PAGE: no screenshot was written" >&2; exit 1; }
echo "$PAGE renders in Chromium: $images images loaded, 0 broken; screenshot $out"
