#!/usr/bin/env bash
# The full test suite on a fresh Debian 12 machine (run as root): installs what it needs, starts the
# Docker daemon, builds the server images, checks types and lint, checks the wheel, then runs pytest against real
# ZooKeeper, etcd and Consul servers in containers. Extra arguments go to the first pytest run; then
# scripts/test-versions.sh runs the conformance and backend tests on ZooKeeper 3.9 and etcd 3.5.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-system.sh
bash scripts/fetch-servers.sh
bash scripts/setup-python.sh

servers=${DISCOVERY_TEST_SERVERS:-container}
if [ "$servers" = container ]; then
  bash scripts/start-docker.sh
  bash scripts/build-images.sh
fi

echo "== ruff" && .venv/bin/ruff check discovery backends tests benchmarks examples scripts
echo "== mypy --strict" && .venv/bin/mypy
echo "== docker-compose.yml" && docker-compose -f docker-compose.yml config -q && echo "valid"
echo "== wheel (built, checked, installed non-editable in a fresh venv, CLI and README modules run)"
bash scripts/check-wheel.sh

echo "== pytest (servers: $servers; ZooKeeper 3.8, etcd 3.4, Consul 1.8)"
export CI=${CI:-false}
.venv/bin/python -m pytest --servers="$servers" -p no:cacheprovider -ra "$@"

# The conformance suite and the ZooKeeper/etcd backend tests again on the second server versions.
bash scripts/test-versions.sh "$servers"
