#!/usr/bin/env bash
# Runs every test (unit, integration in network namespaces, e2e) after an idempotent setup.
# Needs root: the integration tests build a node out of network namespaces.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
cd "$root"
.venv/bin/ruff check .
.venv/bin/mypy  # strict on cni/, validator/, daemonset/ ([tool.mypy] in pyproject.toml)
# pytest exits 5 when no test ran, which fails this script too.
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
