#!/usr/bin/env bash
# Checks that each bundle in dist/bin runs on the C library it carries, whatever the node has:
#  - the launcher (dist/bin/<name>/<name>) is statically linked: no interpreter, no dynamic section;
#  - no ELF file in the bundle needs a GLIBC symbol version newer than the bundled libc.so.6 defines;
#  - every shared library an ELF file needs (DT_NEEDED) is in the bundle's _internal directory (or found
#    through the file's own $ORIGIN run path), so the bundled loader never has to look on the host.
# Usage: scripts/glibc-check.sh      exit 1 when a bundle fails any check
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
status=0
shopt -s nullglob
bundles=("$root"/dist/bin/*/)
((${#bundles[@]})) || { echo "no bundles in dist/bin: run scripts/build-binaries.sh" >&2; exit 1; }
is_elf() { [[ "$(head -c 4 "$1" | od -An -c | tr -d ' ')" == '177ELF' ]]; }
for bundle in "${bundles[@]}"; do
  bundle="${bundle%/}"
  name="$(basename "$bundle")"
  internal="$bundle/_internal"
  problems=()
  if [[ ! -f "$internal/libc.so.6" || ! -f "$internal/ld-linux-x86-64.so.2" ]]; then
    echo "$name: FAIL - no bundled loader and libc.so.6 in _internal"; status=1; continue
  fi
  bundled="$(objdump -p "$internal/libc.so.6" | sed -n '/^Version definitions:/,/^Version References:/p' \
    | grep -o 'GLIBC_2\.[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -n1)"
  if readelf -l "$bundle/$name" 2>/dev/null | grep -q 'INTERP' || readelf -d "$bundle/$name" 2>/dev/null \
      | grep -q 'NEEDED'; then
    problems+=("launcher $name is not static")
  fi
  highest=0 worst="" files=0
  while IFS= read -r -d '' file; do
    is_elf "$file" || continue
    files=$((files + 1))
    case "${file#"$internal"/}" in  # the bundled C library itself defines these versions
      ld-linux-x86-64.so.2|libc.so.6|libm.so.6|libpthread.so.0|libdl.so.2|librt.so.1|libutil.so.1|libresolv.so.2|libanl.so.1)
        need="" ;;
      *) need="$({ objdump -T "$file" 2>/dev/null || true; } | { grep -o 'GLIBC_2\.[0-9.]*' || true; } | sed 's/GLIBC_//' | sort -V | tail -n1)" ;;
    esac
    if [[ -n "$need" && "$(printf '%s\n%s\n' "$need" "$highest" | sort -V | tail -n1)" == "$need" \
          && "$need" != "$highest" ]]; then
      highest="$need" worst="${file#"$bundle"/}"
    fi
    origin="$(dirname "$file")"
    runpath="$(readelf -d "$file" 2>/dev/null | sed -n 's/.*(R\(UN\)\{0,1\}PATH).*\[\(.*\)\]/\2/p' | tr ':' ' ')"
    for lib in $(readelf -d "$file" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
      found=""
      for dir in "$internal" ${runpath//\$ORIGIN/$origin}; do
        [[ -e "$dir/$lib" ]] && found=1 && break
      done
      [[ -n "$found" ]] || problems+=("${file#"$bundle"/} needs $lib, which is not in the bundle")
    done
  done < <(find "$bundle" -type f \( -name '*.so*' -o -perm -u+x \) -print0)
  if [[ "$(printf '%s\n%s\n' "$highest" "$bundled" | sort -V | tail -n1)" != "$bundled" ]]; then
    problems+=("$worst needs GLIBC_$highest, newer than the bundled GLIBC_$bundled")
  fi
  if ((${#problems[@]})); then
    status=1
    echo "$name: FAIL"
    printf '  %s\n' "${problems[@]}"
  else
    echo "$name: ok - bundles glibc $bundled; $files ELF files need at most GLIBC_$highest ($worst) and only" \
         "libraries in the bundle; launcher static"
  fi
done
exit "$status"
