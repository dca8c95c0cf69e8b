#!/usr/bin/env bash
# Idempotent: build the three local test-server images with `docker import` from the Debian binaries
# installed by scripts/install-system.sh. Nothing is pulled from any registry (none is reachable here).
#
#   discovery-test/zookeeper:3.8  jlink'd JRE + /usr/share/java/zookeeper.jar and its Class-Path closure
#   discovery-test/etcd:3.4       /usr/bin/etcd + /usr/bin/etcdctl
#   discovery-test/consul:1.8     /usr/bin/consul
#   discovery-test/zookeeper:3.9  the same JRE + Debian trixie's ZooKeeper 3.9.3 jars, unpacked by
#                                 scripts/fetch-servers.sh at the same path as on the host (/opt/discovery-servers)
#   discovery-test/etcd:3.5       trixie's etcd 3.5.16 (+ etcdctl) at the same path as on the host
#
# Each rootfs holds the binaries, the shared libraries `ldd` names, and a tiny /etc (scripts/images/base).
# The images have no entrypoint: the harness (tests/harness/servers.py) passes the full command line and
# runs them with host networking, so the servers listen on 127.0.0.1 ports it picks.
#
# Usage: scripts/build-images.sh [--force] [zookeeper|etcd|consul|zookeeper-3.9|etcd-3.5 ...]
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
BASE="$HERE/images/base"
FORCE=0
WANT=()
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    zookeeper|etcd|consul|zookeeper-3.9|etcd-3.5) WANT+=("$arg") ;;
    *) echo "usage: $0 [--force] [zookeeper|etcd|consul|zookeeper-3.9|etcd-3.5 ...]" >&2; exit 2 ;;
  esac
done
[ ${#WANT[@]} -gt 0 ] || WANT=(zookeeper etcd consul zookeeper-3.9 etcd-3.5)
SERVERS_DIR=${DISCOVERY_SERVERS_DIR:-/opt/discovery-servers}

declare -A IMAGE=(
  [zookeeper]=${DISCOVERY_TEST_ZOOKEEPER_BUILD_IMAGE:-discovery-test/zookeeper:3.8}
  [etcd]=${DISCOVERY_TEST_ETCD_BUILD_IMAGE:-discovery-test/etcd:3.4}
  [consul]=${DISCOVERY_TEST_CONSUL_BUILD_IMAGE:-discovery-test/consul:1.8}
  [zookeeper-3.9]=discovery-test/zookeeper:3.9
  [etcd-3.5]=discovery-test/etcd:3.5
)
JLINK_MODULES=java.base,java.desktop,java.management,java.naming,java.security.jgss,java.security.sasl,java.sql,jdk.unsupported,jdk.management,jdk.crypto.ec

docker info >/dev/null 2>&1 || { echo "build-images: docker daemon does not answer (run scripts/start-docker.sh)" >&2; exit 1; }

WORK=$(mktemp -d /tmp/discovery-images.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

# add_file ROOT PATH...: copy files (symlinks dereferenced) into ROOT at the same absolute path.
add_file() {
  local root=$1; shift
  local f
  for f in "$@"; do
    cp -L --parents "$f" "$root/"
  done
}

# add_libs ROOT FILE...: copy every shared library ldd resolves for FILE (outside ROOT) plus the loader.
add_libs() {
  local root=$1; shift
  local lib
  ldd "$@" 2>/dev/null | awk '
      $2 == "=>" && $3 ~ /^\// { print $3 }
      $1 ~ /^\// && $2 ~ /^\(/  { print $1 }' | sort -u | while read -r lib; do
    case "$lib" in "$root"/*) continue ;; esac
    [ -e "$root$lib" ] || add_file "$root" "$lib"
  done
}

new_root() {
  local root="$WORK/$1"
  mkdir -p "$root"/{tmp,data,etc,usr/bin}
  chmod 1777 "$root/tmp"
  cp -a "$BASE"/etc/. "$root/etc/"
  echo "$root"
}

import_root() {  # import_root ROOT IMAGE KIND
  local root=$1 image=$2 kind=$3
  tar -C "$root" --numeric-owner -cf - . | docker import \
    --change 'ENV PATH=/usr/bin:/bin' \
    --change 'WORKDIR /' \
    --change "LABEL org.discovery-test.kind=$kind" \
    --message "discovery-test $kind from Debian binaries" \
    - "$image" >/dev/null
}

build_etcd() {
  local root; root=$(new_root etcd)
  add_file "$root" /usr/bin/etcd /usr/bin/etcdctl
  add_libs "$root" /usr/bin/etcd /usr/bin/etcdctl
  import_root "$root" "$1" etcd
}

build_consul() {
  local root; root=$(new_root consul)
  add_file "$root" /usr/bin/consul
  add_libs "$root" /usr/bin/consul
  import_root "$root" "$1" consul
}

# Transitive closure of the jars a jar's manifest Class-Path names (Debian uses absolute paths).
jar_closure() {
  local -A seen=()
  local queue=("$@") jar dep
  while [ ${#queue[@]} -gt 0 ]; do
    jar=${queue[0]}; queue=("${queue[@]:1}")
    [ -n "${seen[$jar]:-}" ] && continue
    [ -e "$jar" ] || { echo "build-images: warning: $jar (named by a Class-Path) is missing" >&2; continue; }
    seen[$jar]=1
    echo "$jar"
    for dep in $(unzip -p "$jar" META-INF/MANIFEST.MF 2>/dev/null | tr -d '\r' \
                 | awk '/^Class-Path:/{p=1; sub(/^Class-Path:/, ""); printf "%s", $0; next}
                        p && /^ /{sub(/^ /, ""); printf "%s", $0; next} {p=0}'); do
      queue+=("$dep")
    done
  done
}

# The second versions (scripts/fetch-servers.sh) keep their host paths, so the harness's command lines are
# the same for processes and containers.
need_servers_dir() {
  [ -f "$SERVERS_DIR/$1/.complete" ] || { echo "build-images: $SERVERS_DIR/$1 missing (run scripts/fetch-servers.sh)" >&2; exit 1; }
}

build_etcd-3.5() {
  need_servers_dir etcd-3.5
  local root; root=$(new_root etcd-3.5)
  add_file "$root" "$SERVERS_DIR/etcd-3.5/usr/bin/etcd" "$SERVERS_DIR/etcd-3.5/usr/bin/etcdctl"
  add_libs "$root" "$SERVERS_DIR/etcd-3.5/usr/bin/etcd" "$SERVERS_DIR/etcd-3.5/usr/bin/etcdctl"
  import_root "$root" "$1" etcd
}

build_zookeeper-3.9() {
  need_servers_dir zookeeper-3.9
  local root; root=$(new_root zookeeper-3.9)
  add_jre "$root"
  # shellcheck disable=SC2046
  add_file "$root" $(find "$SERVERS_DIR/zookeeper-3.9/usr/share/java" -name '*.jar')
  import_root "$root" "$1" zookeeper
}

add_jre() {  # add_jre ROOT: a jlink'd JRE at /opt/jre with /usr/bin/java and its libraries
  local root=$1 java_home
  java_home=$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")
  "$java_home/bin/jlink" --add-modules "$JLINK_MODULES" --strip-debug --no-header-files --no-man-pages \
    --output "$root/opt/jre"
  ln -s /opt/jre/bin/java "$root/usr/bin/java"
  # libjvm.so is found through java's RPATH; ldd on the other libs names it "not found": harmless.
  add_libs "$root" "$root/opt/jre/bin/java" "$root"/opt/jre/lib/*.so "$root"/opt/jre/lib/server/libjvm.so
}

build_zookeeper() {
  local root; root=$(new_root zookeeper)
  add_jre "$root"
  # shellcheck disable=SC2046
  add_file "$root" $(jar_closure /usr/share/java/zookeeper.jar /usr/share/java/slf4j-simple.jar)
  import_root "$root" "$1" zookeeper
}

start=$SECONDS
pids=()
for kind in "${WANT[@]}"; do
  image=${IMAGE[$kind]}
  if [ $FORCE -eq 0 ] && docker image inspect "$image" >/dev/null 2>&1; then
    echo "build-images: $image exists (use --force to rebuild)"
    continue
  fi
  ( t=$SECONDS; "build_$kind" "$image"; echo "build-images: built $image in $((SECONDS - t))s" ) &
  pids+=($!)
done
rc=0
for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
[ $rc -eq 0 ] || { echo "build-images: a build failed" >&2; exit 1; }
echo "build-images: done in $((SECONDS - start))s"
