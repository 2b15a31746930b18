#!/usr/bin/env bash
# ADD-path benchmark against Debian's portmap in the same run (needs root). Not a test.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
cd "$root"
exec .venv/bin/python scripts/bench.py "$@"
# With --binaries it measures dist/bin (build first: scripts/build-binaries.sh).
