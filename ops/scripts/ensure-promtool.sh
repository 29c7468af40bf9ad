#!/usr/bin/env bash
# Print the path of a promtool that can check ops/prometheus/: the one on PATH, else one unpacked into .run/bin
# from Debian's prometheus package (only the binary is taken: nothing is installed, no daemon is started).
set -euo pipefail
cd "$(dirname "$0")/../.."

if command -v promtool >/dev/null 2>&1; then command -v promtool; exit 0; fi
local_bin=.run/bin/promtool
if [[ ! -x "$local_bin" ]]; then
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    # apt-get download drops privileges to _apt, which cannot write a root-owned temp dir.
    chmod 0777 "$work"
    (cd "$work" && { apt-get download -qq prometheus 2>/dev/null || { apt-get update -qq && apt-get download -qq prometheus; }; }) >&2
    dpkg-deb -x "$work"/prometheus_*.deb "$work/x"
    mkdir -p .run/bin
    install -m 0755 "$work/x/usr/bin/promtool" "$local_bin"
fi
echo "$PWD/$local_bin"
