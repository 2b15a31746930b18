#!/usr/bin/env bash
# Builds the real Kubernetes components (kube-apiserver, kubelet, etcd, containerd 2, the CNI
# plugins, crictl, helm, ...) from their Go modules, pinned in scripts/components/: go.mod and go.sum
# (versions), versions.txt (what the binaries report), programs.txt (file name and package).
#
# The binaries go to a cache directory keyed by a hash of those files and this script:
#   ${MGW_COMPONENTS_CACHE:-/var/cache/microgateway-cni/components}/<key>/bin
# A run whose key is cached only prints the directory. Otherwise one `go build` builds every program
# (the packages they share compile once), static (CGO_ENABLED=0) and stripped, with Go's own build and
# module caches (GOCACHE, GOMODCACHE) as the environment sets them.
#
# stdout: the bin directory. stderr: one line per program as it lands, then a summary; Go's output only
# if something fails. `--print-dir` prints the directory without building. A successful build removes
# the cache entries other than itself and the one used last (about 0.7 GB each).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$root/scripts/components"
inputs=("$src/go.mod" "$src/go.sum" "$src/versions.txt" "$src/programs.txt" "$root/scripts/components.sh")
key="$(cat "${inputs[@]}" | sha256sum | cut -c1-16)"
cache="${MGW_COMPONENTS_CACHE:-/var/cache/microgateway-cni/components}"
dir="$cache/$key"

if [[ "${1:-}" == --print-dir ]]; then
  echo "$dir/bin"
  exit 0
fi
if [[ -e "$dir/complete" ]]; then
  touch "$dir/complete" 2>/dev/null || true  # last use: what pruning goes by
  echo "$dir/bin"
  exit 0
fi

say() { echo "components: $*" >&2; }
fail() { say "$*"; exit 1; }

# One build at a time per cache directory; a second caller waits and then finds the result.
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
if [[ -e "$dir/complete" ]]; then
  echo "$dir/bin"
  exit 0
fi

# The Go that go.mod asks for, without fetching a toolchain: the machine's Go comes first on PATH here,
# while Debian's golang-go (older) may shadow it elsewhere.
need="go$(sed -n 's/^go //p' "$src/go.mod")"
go_ok() { local v; v="$("$1" env GOVERSION 2>/dev/null)" || return 1
          [[ "$(printf '%s\n%s\n' "$need" "$v" | sort -V | head -1)" == "$need" ]]; }
go=""
for candidate in "$(command -v go || true)" /usr/local/go/bin/go; do
  if [[ -n "$candidate" ]] && go_ok "$candidate"; then go="$candidate"; break; fi
done
[[ -n "$go" ]] || fail "needs $need or newer (go on PATH: $(command -v go || echo none)); none found"

# name=version pairs; go.mod must pin the same versions (what the binaries report comes from here).
declare -A version
while IFS='=' read -r name value; do
  [[ -z "$name" || "$name" == \#* ]] && continue
  version[$name]="$value"
done <"$src/versions.txt"
pinned() { awk -v m="$1" '$1 == m && $2 ~ /^v/ { print $2 }' "$src/go.mod"; }
for pair in kubernetes:k8s.io/kubernetes etcd:go.etcd.io/etcd/server/v3 etcd:go.etcd.io/etcd/api/v3 \
            containerd:github.com/containerd/containerd/v2 cni-plugins:github.com/containernetworking/plugins \
            cri-tools:sigs.k8s.io/cri-tools helm:helm.sh/helm/v4; do
  name="${pair%%:*}" module="${pair#*:}"
  [[ "$(pinned "$module")" == "${version[$name]:-}" ]] ||
    fail "versions.txt says $name=${version[$name]:-?} but go.mod pins $module $(pinned "$module")"
done

# Where each program's version string comes from (release builds set the same variables).
k8s="${version[kubernetes]}"
k8s_minor="${k8s#v*.}"
k8s_minor="${k8s_minor%%.*}"
k8s_major="${k8s#v}"
k8s_major="${k8s_major%%.*}"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$k8s -X $pkg.gitMajor=$k8s_major -X $pkg.gitMinor=$k8s_minor"
  ldflags+=" -X $pkg.gitTreeState=clean"
done
ldflags+=" -X github.com/containerd/containerd/v2/version.Version=${version[containerd]}"
ldflags+=" -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=${version[cni-plugins]}"
ldflags+=" -X sigs.k8s.io/cri-tools/pkg/version.Version=${version[cri-tools]}"
ldflags+=" -X helm.sh/helm/v4/internal/version.version=${version[helm]}"
ldflags+=" -X helm.sh/helm/v4/internal/version.gitTreeState=clean"
# etcd reports go.etcd.io/etcd/api/v3's version constant (checked against versions.txt above).

names=() packages=() built=()
while read -r name package; do
  [[ -z "$name" || "$name" == \#* ]] && continue
  names+=("$name") packages+=("$package")
done <"$src/programs.txt"
# The file `go build -o DIR/` writes: the package's last element that is not a major version (/v3).
go_name() { local p="$1"; [[ "$p" =~ /v[0-9]+$ ]] && p="${p%/*}"; echo "${p##*/}"; }

# Entries of other keys are old builds; a *.tmp.* directory is a build that did not finish.
rm -rf "$cache"/*.tmp.*
tmp="$dir.tmp.$$"
mkdir -p "$tmp/bin"
builder=""
cleanup() {
  if [[ -n "$builder" ]] && kill -0 "$builder" 2>/dev/null; then
    kill -- "$builder" 2>/dev/null || true
    wait "$builder" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
log="$tmp/build.log"

export CGO_ENABLED=0
cd "$src"
start=$SECONDS
say "building ${#names[@]} programs with $("$go" env GOVERSION) into $dir"
if ! "$go" list -deps "${packages[@]}" >/dev/null 2>"$log"; then
  cat "$log" >&2
  fail "could not load the programs' packages (module download or go.mod): see above"
fi
download=$((SECONDS - start))
say "modules ready in ${download}s (GOMODCACHE=$("$go" env GOMODCACHE))"

"$go" build -trimpath -ldflags "$ldflags" -debug-actiongraph="$tmp/actions.json" \
  -o "$tmp/bin/" "${packages[@]}" >>"$log" 2>&1 &
builder=$!
# One line per program as its binary lands (go build writes each one when its link finishes).
report_landed() {
  local i
  for i in "${!names[@]}"; do
    [[ " ${built[*]} " == *" ${names[$i]} "* ]] && continue
    if [[ -e "$tmp/bin/$(go_name "${packages[$i]}")" ]]; then
      built+=("${names[$i]}")
      say "[$(printf '%2d' "${#built[@]}")/${#names[@]}] ${names[$i]} at +$((SECONDS - start))s"
    fi
  done
}
while kill -0 "$builder" 2>/dev/null; do
  report_landed
  sleep 1
done
rc=0
wait "$builder" || rc=$?
builder=""
report_landed
if ((rc != 0)); then
  cat "$log" >&2
  missing=()
  for i in "${!names[@]}"; do [[ -e "$tmp/bin/$(go_name "${packages[$i]}")" ]] || missing+=("${names[$i]}"); done
  first="$(grep -m1 '^# ' "$log" || true)"
  fail "go build failed; not built: ${missing[*]:-none}${first:+ (first error in ${first#\# })}"
fi
for i in "${!names[@]}"; do
  from="$(go_name "${packages[$i]}")"
  [[ "$from" == "${names[$i]}" ]] || mv "$tmp/bin/$from" "$tmp/bin/${names[$i]}"
  [[ -x "$tmp/bin/${names[$i]}" ]] || fail "go build succeeded but left no ${names[$i]}"
done

# What the time went into, from go build's action graph: per program its link step (the part that is
# its own; the packages are compiled once for all) and when that link could start and when it ended.
python3 - "$tmp/actions.json" "$tmp/build-times.tsv" "${names[@]}" "--" "${packages[@]}" <<'EOF'
import json, sys
from datetime import datetime
actions_file, out, *rest = sys.argv[1:]
split = rest.index("--")
by_package = dict(zip(rest[split + 1:], rest[:split]))
actions = json.load(open(actions_file))
def t(s):
    return datetime.fromisoformat(s).timestamp()
stamps = [t(a[k]) for a in actions for k in ("TimeStart", "TimeDone") if a.get(k)]
first = min(stamps)
compiled = sum(1 for a in actions if a.get("Mode") == "build" and a.get("Cmd"))
with open(out, "w") as f:
    f.write("program\tlink_s\tlink_started_at_s\tdone_at_s\n")
    for a in actions:
        if a.get("Mode") == "link" and a.get("Package") in by_package and a.get("TimeStart"):
            s, d = t(a["TimeStart"]), t(a["TimeDone"])
            f.write(f"{by_package[a['Package']]}\t{d - s:.1f}\t{s - first:.1f}\t{d - first:.1f}\n")
    f.write(f"# go build: {max(stamps) - first:.1f}s, {compiled} packages compiled\n")
EOF
rm -f "$tmp/actions.json" "$log"
touch "$tmp/complete"
rm -rf "$dir"
mv "$tmp" "$dir"
trap - EXIT
# Keep this build and the one used last before it (another branch's pins); older ones go.
ls -1t "$cache"/????????????????/complete 2>/dev/null | tail -n +3 | while read -r stamp; do
  old="${stamp%/complete}"
  if [[ "$(basename "$old")" =~ ^[0-9a-f]{16}$ ]]; then rm -rf "$old"; fi
done
links="$(awk -F'\t' 'NR > 1 && !/^#/ { printf "%s%s %ss", sep, $1, $2; sep = ", " }' "$dir/build-times.tsv")"
say "built ${#names[@]} programs in $((SECONDS - start))s (modules ${download}s, go build $((SECONDS - start - download))s);" \
    "link times: $links"
echo "$dir/bin"
