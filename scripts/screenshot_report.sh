#!/usr/bin/env bash
# Render a run's report.html in a real headless browser (Debian's chromium) to a PNG, to look at it.
#
#   scripts/screenshot_report.sh RUN_DIR_OR_REPORT_HTML OUT.png [WIDTH] [HEIGHT]
#
# Needs chromium (Debian: apt-get install chromium); it is not a dependency of bayes-merger.
# The browser gets a throw-away profile and no network features, so it touches nothing of yours.
set -euo pipefail

usage() { echo "usage: $0 RUN_DIR|report.html OUT.png [WIDTH=1280] [HEIGHT=2000]" >&2; exit 2; }
[[ $# -ge 2 && $# -le 4 ]] || usage
target=$1 out=$2 width=${3:-1280} height=${4:-2000}

if [[ -d $target ]]; then target=$target/report.html; fi
if [[ ! -f $target ]]; then
    echo "$0: $target does not exist: build it first with: python -m bayes_merger.report RUN_DIR" >&2
    exit 1
fi
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [[ -z $browser ]]; then
    echo "$0: no chromium found: install it (Debian: apt-get install chromium)." >&2
    exit 1
fi

page=$(realpath "$target")
out=$(realpath -m "$out")
rm -f "$out"
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT

"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --hide-scrollbars --user-data-dir="$profile" \
    --screenshot="$out" --window-size="$width,$height" "file://$page" >/dev/null 2>&1 || true

if [[ ! -s $out ]]; then
    echo "$0: chromium wrote no screenshot to $out." >&2
    exit 1
fi
echo "$out"
