#!/usr/bin/env bash
# Prints the highest GLIBC symbol version each binary bundle (and every library in it) requires.
# Usage: scripts/glibc-check.sh [MAX]   exit 1 when a requirement is above MAX (default 2.28, RHEL 8)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
max="${1:-2.28}"
status=0
for bundle in "$root"/dist/bin/*/; do
  highest="$(find "$bundle" -type f \( -name '*.so*' -o -perm -u+x \) -print0 \
    | xargs -0 -r objdump -T 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -n1)"
  worst="$(find "$bundle" -type f \( -name '*.so*' -o -perm -u+x \) -print0 | while IFS= read -r -d '' f; do
      v="$(objdump -T "$f" 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -n1)"
      if [[ "$v" == "$highest" ]]; then basename "$f"; fi; done | sort -u | tr '\n' ' ')"
  verdict=ok
  if [[ "$(printf '%s\n%s\n' "$highest" "$max" | sort -V | tail -n1)" != "$max" ]]; then verdict="ABOVE $max"; status=1; fi
  echo "$(basename "$bundle"): needs GLIBC_$highest ($verdict) - from: $worst"
done
exit "$status"
