#!/usr/bin/env bash
# The second server versions: the conformance suite, the ZooKeeper and etcd backend tests and the version
# check against Debian trixie's ZooKeeper 3.9.3 and etcd 3.5.16 (scripts/fetch-servers.sh), after the full
# suite ran on ZooKeeper 3.8 / etcd 3.4 / Consul 1.8. Consul has one version here (1.8.7), so its tests
# are not repeated. Called by scripts/test.sh; extra arguments go to pytest.
#
# Usage: scripts/test-versions.sh [container|process] [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
servers=${1:-${DISCOVERY_TEST_SERVERS:-container}}
shift || true

echo "== pytest (servers: $servers; ZooKeeper 3.9, etcd 3.5): conformance + ZooKeeper/etcd backend tests"
start=$SECONDS
export CI=${CI:-false}
.venv/bin/python -m pytest --servers="$servers" --zookeeper-version=3.9 --etcd-version=3.5 -p no:cacheprovider -ra \
  tests/test_server_versions.py \
  tests/conformance/test_zookeeper.py tests/conformance/test_etcd.py \
  tests/backends/test_zookeeper_records.py tests/backends/test_zookeeper_session.py \
  tests/backends/test_zookeeper_curator_interop.py \
  tests/backends/test_etcd_records.py tests/backends/test_etcd_leases.py tests/backends/test_etcd_outages.py \
  tests/interop/test_etcd_go.py \
  "$@"
echo "test-versions: ZooKeeper 3.9 / etcd 3.5 run took $((SECONDS - start)) s"
