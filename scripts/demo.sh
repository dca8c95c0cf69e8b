#!/usr/bin/env bash
# The main job on a fresh machine: install the package into .venv and run the demo on the embedded
# in-memory backend (pass --url URL to run it against ZooKeeper, etcd or Consul).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-python.sh
if [ $# -gt 0 ]; then exec .venv/bin/discovery "$@" demo; fi
exec .venv/bin/discovery demo
