#!/usr/bin/env bash
# Builds the three self-contained binaries into dist/bin/<name>/ with PyInstaller in one-dir mode. They
# bundle python-iptables' C libraries and every xtables extension, so a node needs neither Python nor
# iptables, and the build machine's dynamic loader and glibc, so they need no C library from the node:
#   <name>             static launcher (scripts/launcher/launcher.c, musl): the file the kubelet runs
#   <name>.bootloader  PyInstaller's bootloader, started by the launcher through _internal's loader
#   _internal/         Python, the program, its libraries, ld-linux-x86-64.so.2, libc.so.6 and friends
#   licenses/          copyright notices of everything bundled (docs/design.md, "Self-contained bundles")
# Why one-dir: a one-file build unpacks its whole archive on every run, every pod start (docs/design.md,
# "Self-contained bundles"). What goes into each bundle is in scripts/pyinstaller/bundles.spec.
# Usage: scripts/build-binaries.sh [NAME...]   (default: all three)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# In the image builder the test tooling (Go, libcni driver, test virtualenv) is not needed.
[[ "${MGW_SKIP_SETUP:-}" == 1 ]] || "$root/scripts/setup.sh"
cd "$root"
mkdir -p "$root/build"
# The binaries are built from Debian's Python, not the test virtualenv's: no DT_RUNPATH into a
# build-machine path (pyenv sets one) may end up in a bundle that runs on other machines.
for pkg in python3.11-venv libpython3.11 binutils libxtables12 libip4tc2 libip6tc2 iptables musl-tools; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
    || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null
done
venv="$root/.build-venv"
stamp="$venv/.installed-$(cat "$root/pyproject.toml" "$0" | sha256sum | cut -c1-16)"
if [[ ! -e "$stamp" ]]; then
  rm -rf "$venv"
  /usr/bin/python3.11 -m venv "$venv"
  "$venv/bin/pip" install -q --no-cache-dir "$root" "pyinstaller>=6.0" >"$root/build/pip.log" 2>&1 \
    || { cat "$root/build/pip.log" >&2; exit 1; }
  touch "$stamp"
fi
multiarch="$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)"
libdir="/usr/lib/$multiarch"
site="$("$venv/bin/python" -c 'import iptc, os; print(os.path.dirname(os.path.dirname(iptc.__file__)))')"
wrapper="$(ls "$site"/libxtwrapper*.so)"
work="$root/build/pyinstaller"
mkdir -p "$root/dist/bin" "$work"
names=(microgateway-cni microgateway-network-validator microgateway-cni-installer)
if (($#)); then
  for name in "$@"; do
    [[ " ${names[*]} " == *" $name "* ]] || { echo "unknown binary '$name' (one of: ${names[*]})" >&2; exit 2; }
  done
  names=("$@")
fi
MGW_ROOT="$root" MGW_LIBDIR="$libdir" MGW_XTWRAPPER="$wrapper" MGW_BUNDLES="${names[*]}" \
  "$venv/bin/pyinstaller" --noconfirm --clean --log-level WARN --workpath "$work" --distpath "$work/dist" \
  "$root/scripts/pyinstaller/bundles.spec"
launcher="$root/build/launcher"
musl-gcc -static -Os -s -Wall -Wextra -Werror -o "$launcher" "$root/scripts/launcher/launcher.c"
# The C library the bundles run on (PyInstaller leaves these out as "system libraries"). glibc >= 2.34 has
# the files and dns NSS modules built in, so host names resolve through /etc/hosts and resolv.conf.
glibc=(ld-linux-x86-64.so.2 libc.so.6 libm.so.6 libpthread.so.0 libdl.so.2 librt.so.1 libutil.so.1 libresolv.so.2
       libanl.so.1 libgcc_s.so.1)
# Debian package owning a bundled file (by its source location), for its copyright notice.
owner() {
  local base="$1" candidate
  for candidate in "$libdir/$base" "/lib/$multiarch/$base" "$libdir/xtables/$base" \
                   "/usr/lib/python3.11/lib-dynload/$base"; do
    dpkg-query -S "$candidate" 2>/dev/null | head -n1 | cut -d: -f1 && return
  done
  return 0  # not from a Debian package (a wheel's library): its notice comes with the wheel's licence files
}
notices() {
  local bundle="$1" dest="$1/licenses" pkg dist
  mkdir -p "$dest"
  local -A packages=([musl]=1 [libpython3.11-stdlib]=1 [libpython3.11-minimal]=1)
  while IFS= read -r -d '' file; do
    pkg="$(owner "$(basename "$file")")"
    [[ -n "$pkg" ]] && packages[$pkg]=1
  done < <(find "$bundle/_internal" -type f -name '*.so*' -print0)
  for pkg in "${!packages[@]}"; do
    cp -L "/usr/share/doc/$pkg/copyright" "$dest/$pkg.copyright"
    echo "$pkg $(dpkg-query -W -f='${Version} (source: ${source:Package})' "$pkg")"
  done | sort >"$dest/debian-packages.txt"
  for dist in "$site"/*.dist-info; do
    case "$(basename "$dist")" in pip-*|setuptools-*) continue ;; esac
    find "$dist" \( -iname 'LICEN[CS]E*' -o -iname 'COPYING*' -o -iname 'NOTICE*' \) -type f -print0 \
      | while IFS= read -r -d '' f; do cp "$f" "$dest/$(basename "$dist" .dist-info).$(basename "$f")"; done
  done
  cp "$root/scripts/pyinstaller/NOTICE" "$dest/README"
}
for name in "${names[@]}"; do
  rm -rf "$root/dist/bin/$name.tmp"
  cp -a "$work/dist/$name" "$root/dist/bin/$name.tmp"
  mv "$root/dist/bin/$name.tmp/$name" "$root/dist/bin/$name.tmp/$name.bootloader"
  install -m 0755 "$launcher" "$root/dist/bin/$name.tmp/$name"
  for lib in "${glibc[@]}"; do
    install -m 0755 "$libdir/$lib" "$root/dist/bin/$name.tmp/_internal/$lib"
  done
  notices "$root/dist/bin/$name.tmp"
  rm -rf "$root/dist/bin/$name"
  mv "$root/dist/bin/$name.tmp" "$root/dist/bin/$name"
  echo "built dist/bin/$name/$name ($(du -sh "$root/dist/bin/$name" | cut -f1))"
done
