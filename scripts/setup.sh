#!/usr/bin/env bash
# Idempotent machine + virtualenv setup shared by demo.sh, test.sh and bench.sh.
# Installs Debian packages only when missing, (re)installs the project into .venv only when
# pyproject.toml changed, and builds the libcni test driver offline from Debian's Go sources.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The second line is what scripts/build-binaries.sh builds the bundles from (the e2e tests build them):
# listed here so that one `apt-get update` serves both on a fresh machine. The third is the node tier's
# (tests/node): containerd with its CRI plugin and runc run the pods, buildah builds the Dockerfile, mmdebstrap
# makes the Debian base images no registry can give here, busybox-static fills the pause and stand-in images.
packages=(iptables nftables containernetworking-plugins golang-go golang-github-appc-cni-dev iproute2 openssl
          util-linux binutils python3.11-venv libpython3.11 libxtables12 libip4tc2 libip6tc2 musl-tools
          containerd runc buildah mmdebstrap busybox-static)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# kubectl renders the DaemonSet manifests (kustomize) in the tests; Debian ships it as kubernetes-client.
command -v kubectl >/dev/null || missing+=(kubernetes-client)
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Every external command the tests, the demo and the build run: a package that installed but left one out
# (or a name that changed between releases) is named here, not as a FileNotFoundError deep in a test.
commands=(ip nsenter unshare mount umount setpriv sysctl iptables iptables-legacy iptables-legacy-save
          iptables-legacy-restore ip6tables-legacy ip6tables-legacy-save ip6tables-legacy-restore iptables-nft nft
          openssl readelf kubectl go musl-gcc /usr/bin/python3.11 containerd ctr runc buildah mmdebstrap
          /bin/busybox /usr/lib/cni/bridge
          /usr/lib/cni/host-local /usr/lib/cni/loopback /usr/lib/cni/portmap)
absent=()
for cmd in "${commands[@]}"; do command -v "$cmd" >/dev/null || absent+=("$cmd"); done
if ((${#absent[@]})); then
  echo "setup: installed packages, but these commands are still missing: ${absent[*]}" >&2
  exit 1
fi

venv="$root/.venv"
stamp="$venv/.installed-$(sha256sum "$root/pyproject.toml" | cut -c1-16)"
if [[ ! -e "$stamp" ]]; then
  echo "setup: installing the project into $venv" >&2
  python3 -m venv "$venv"
  log="$venv/pip-install.log"
  if ! { "$venv/bin/pip" install --upgrade pip && "$venv/bin/pip" install -e "$root[test]"; } >"$log" 2>&1; then
    cat "$log" >&2
    exit 1
  fi
  rm -f "$venv"/.installed-*
  touch "$stamp"
fi

driver_dir="$root/tests/support/libcni-driver"
if [[ ! -x "$driver_dir/libcni-driver" || "$driver_dir/main.go" -nt "$driver_dir/libcni-driver" ]]; then
  echo "setup: building the libcni driver (offline, Debian's libcni)" >&2
  (cd "$driver_dir" && GOPROXY=off GOFLAGS=-mod=mod GOCACHE="${GOCACHE:-/tmp/mgw-gocache}" \
    go build -o libcni-driver . )
fi

# The real Kubernetes components the chart and cluster tiers run (kube-apiserver, etcd, kubelet,
# containerd 2, the CNI plugins that answer STATUS, crictl, helm), built from their Go modules
# (scripts/components/), cached by a hash of the pins: about 9 minutes cold on 2 cores, nothing when cached.
"$root/scripts/components.sh" >/dev/null
