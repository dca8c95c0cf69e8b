#!/usr/bin/env bash
# Idempotent install of the system packages the tests and the demo need on Debian 12 (run as root).
# ZooKeeper, etcd and the Curator jars come from bookworm; Consul 1.8.7 only exists in bullseye, so a
# bullseye suite entry is added just long enough to install it, then removed again. The second server
# versions (trixie's ZooKeeper 3.9.3 and etcd 3.5.16) are fetched by scripts/fetch-servers.sh, without
# touching the machine's apt sources.
set -euo pipefail

need=()
# golang-go + golang-etcd-server-dev: the Go etcd naming peer of tests/interop (built offline, GOPATH mode).
for pkg in zookeeper etcd-server etcd-client docker.io docker-compose libcurator-discovery-java \
           libcurator-framework-java libslf4j-java libnetty-java default-jdk-headless openssl \
           golang-go golang-etcd-server-dev; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
have_consul=1; command -v consul >/dev/null 2>&1 || have_consul=0

if [ ${#need[@]} -eq 0 ] && [ $have_consul -eq 1 ]; then
  echo "install-system: everything present"; exit 0
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
if [ ${#need[@]} -gt 0 ]; then
  apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

if [ $have_consul -eq 0 ]; then
  src=$(ls /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  bullseye=/etc/apt/sources.list.d/zz-discovery-bullseye.sources
  if [ -n "$src" ]; then
    uri=$(awk '/^URIs:/{print $2; exit}' "$src")
  else
    uri=http://deb.debian.org/debian
  fi
  printf 'Types: deb\nURIs: %s\nSuites: bullseye\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$uri" > "$bullseye"
  trap 'rm -f "$bullseye"; apt-get update -qq || true' EXIT
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends consul/bullseye
fi
echo "install-system: done"
