#!/usr/bin/env bash
# The demo: a one-node Kubernetes cluster on this machine (etcd, kube-apiserver, controller manager,
# scheduler; a node with containerd 2, the kubelet and kube-proxy), told through kubectl. The node joins
# with the start-up taint; `kubectl apply -k` installs the plugin and lifts it; protected pods pass their
# validator and real traffic goes through the Engine; a pod started while the plugin is not chained is
# refused and repaired; `kubectl delete -k` gives the primary CNI its conflist back.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
cd "$root"
exec .venv/bin/python -m tests.support.demo "$@"
