#!/usr/bin/env bash
# Builds the three self-contained binaries into dist/bin/<name>/ with PyInstaller in one-dir mode: the
# executable plus the _internal directory it owns. They bundle python-iptables' C libraries and every
# xtables extension, so a node needs neither Python nor iptables.
# Why one-dir: a one-file build (with staticx for glibc independence) unpacks ~13 MB on every run,
# measured at ~1 s per plugin invocation (scripts/bench.py), 6x portmap; a one-dir bundle starts in
# ~25 ms (empty program). What goes into each bundle is in scripts/pyinstaller/bundles.spec.
# Usage: scripts/build-binaries.sh [NAME...]   (default: all three)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# In the image builder the test tooling (Go, libcni driver, test virtualenv) is not needed.
[[ "${MGW_SKIP_SETUP:-}" == 1 ]] || "$root/scripts/setup.sh"
cd "$root"
mkdir -p "$root/build"
# The binaries are built from Debian's Python, not the test virtualenv's: no DT_RUNPATH into a
# build-machine path (pyenv sets one) may end up in a bundle that runs on other machines.
for pkg in python3.11-venv libpython3.11 binutils libxtables12 libip4tc2 libip6tc2 iptables; do
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
for name in "${names[@]}"; do
  rm -rf "$root/dist/bin/$name.tmp"
  cp -a "$work/dist/$name" "$root/dist/bin/$name.tmp"
  rm -rf "$root/dist/bin/$name"
  mv "$root/dist/bin/$name.tmp" "$root/dist/bin/$name"
  echo "built dist/bin/$name/$name ($(du -sh "$root/dist/bin/$name" | cut -f1))"
done
