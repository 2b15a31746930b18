#!/usr/bin/env bash
# The local node demo: a node built out of network namespaces, pods wired through libcni with
# microgateway-cni chained after bridge, real traffic showing which path each request takes. The node
# boots with the start-up taint: the pods wait until the installer has chained the plugin and lifted it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
cd "$root"
exec .venv/bin/python -m tests.support.demo "$@"
