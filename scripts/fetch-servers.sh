#!/usr/bin/env bash
# Idempotent: fetch the second server versions the tests run against - Debian trixie's ZooKeeper 3.9.3 and
# etcd 3.5.16 - and unpack them into $DISCOVERY_SERVERS_DIR (default /opt/discovery-servers):
#
#   /opt/discovery-servers/zookeeper-3.9/usr/share/java/*.jar   zookeeper.jar 3.9.3 and the jars it needs
#   /opt/discovery-servers/etcd-3.5/usr/bin/{etcd,etcdctl}      etcd 3.5.16
#
# The machine's own apt sources are never touched: `apt-get update` and `apt-get download` run against a
# private sources list and state directory (options -o Dir::Etc::SourceList / SourceParts / State::Lists /
# Cache), the .debs are unpacked with `dpkg -x` (no maintainer scripts, nothing registered with dpkg).
# The harness runs them as processes (tests/harness/specs.py) and scripts/build-images.sh packs them into
# the discovery-test/zookeeper:3.9 and discovery-test/etcd:3.5 images.
#
# Usage: scripts/fetch-servers.sh [--force]
set -euo pipefail

DEST=${DISCOVERY_SERVERS_DIR:-/opt/discovery-servers}
FORCE=0
[ "${1:-}" = --force ] && FORCE=1

ZK_DIR="$DEST/zookeeper-3.9"
ETCD_DIR="$DEST/etcd-3.5"
if [ $FORCE -eq 0 ] && [ -f "$ZK_DIR/.complete" ] && [ -f "$ETCD_DIR/.complete" ]; then
  echo "fetch-servers: $ZK_DIR and $ETCD_DIR present"; exit 0
fi

# The mirror the machine already uses (deb822 or one-line format), else Debian's own.
uri=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
[ -n "$uri" ] || uri=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
[ -n "$uri" ] || uri=http://deb.debian.org/debian

PRIVATE=$(mktemp -d /tmp/discovery-trixie-apt.XXXXXX)
trap 'rm -rf "$PRIVATE"' EXIT
mkdir -p "$PRIVATE"/{lists/partial,parts,archives/partial,debs}
printf 'Types: deb\nURIs: %s\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
  "$uri" > "$PRIVATE/parts/trixie.sources"
: > "$PRIVATE/sources.list"
APT_OPTS=(
  -o "Dir::Etc::SourceList=$PRIVATE/sources.list"
  -o "Dir::Etc::SourceParts=$PRIVATE/parts"
  -o "Dir::State::Lists=$PRIVATE/lists"
  -o "Dir::State::status=/dev/null"
  -o "Dir::Cache=$PRIVATE/cache"
  -o "Dir::Cache::Archives=$PRIVATE/archives"
  -o "APT::Get::List-Cleanup=false"
  -o "Debug::NoLocking=true"
)
echo "fetch-servers: apt-get update (private trixie list, $uri)"
apt-get "${APT_OPTS[@]}" update -qq

# The packages that ship the jars ZooKeeper 3.9.3's server runs with (tests/harness/specs.py ZOOKEEPER_39_JARS),
# from trixie too, so the versions are the ones 3.9.3 was built against.
ZK_PACKAGES=(libzookeeper-java libnetty-java libslf4j-java libcommons-io-java libcommons-cli-java
             libdropwizard-metrics-java libsnappy-java)
ETCD_PACKAGES=(etcd-server etcd-client)

cd "$PRIVATE/debs"
available=()
for pkg in "${ZK_PACKAGES[@]}" "${ETCD_PACKAGES[@]}"; do
  if apt-cache "${APT_OPTS[@]}" show "$pkg" >/dev/null 2>&1; then available+=("$pkg"); fi
done
apt-get "${APT_OPTS[@]}" download -qq "${available[@]}"

unpack() {  # unpack DIR PACKAGE...: dpkg -x each downloaded .deb of those packages into DIR
  local dir=$1; shift
  rm -rf "$dir.tmp"; mkdir -p "$dir.tmp"
  local pkg deb
  for pkg in "$@"; do
    for deb in "$PRIVATE/debs/${pkg}"_*.deb; do
      [ -e "$deb" ] && dpkg -x "$deb" "$dir.tmp"
    done
  done
  rm -rf "$dir"; mv "$dir.tmp" "$dir"
}
mkdir -p "$DEST"
unpack "$ZK_DIR" "${ZK_PACKAGES[@]}"
unpack "$ETCD_DIR" "${ETCD_PACKAGES[@]}"
for deb in "$PRIVATE"/debs/*.deb; do dpkg-deb -f "$deb" Package Version | paste -sd' '; done > "$DEST/versions.txt"

test -f "$ZK_DIR/usr/share/java/zookeeper.jar" || { echo "fetch-servers: no zookeeper.jar in trixie's libzookeeper-java" >&2; exit 1; }
test -x "$ETCD_DIR/usr/bin/etcd" || { echo "fetch-servers: no etcd in trixie's etcd-server" >&2; exit 1; }
touch "$ZK_DIR/.complete" "$ETCD_DIR/.complete"
"$ETCD_DIR/usr/bin/etcd" --version | head -1
unzip -p "$ZK_DIR/usr/share/java/zookeeper.jar" META-INF/MANIFEST.MF | tr -d '\r' | grep -i '^Implementation-Version\|^Bundle-Version' | head -1 || true
echo "fetch-servers: done ($DEST)"
