#!/usr/bin/env bash
# Idempotent: make sure a Docker daemon answers on the default socket.
# The daemon is started without any bridge network, iptables or IP forwarding: every test server
# runs with host networking and listens on 127.0.0.1 only (see docs/decisions/real-servers-harness.md).
set -euo pipefail

LOG=${DOCKERD_LOG:-/tmp/dockerd.log}
DEADLINE_S=${DOCKERD_START_TIMEOUT:-60}

if docker info >/dev/null 2>&1; then
  echo "start-docker: daemon already answers"
  exit 0
fi

DOCKERD=$(command -v dockerd || true)
[ -n "$DOCKERD" ] || DOCKERD=/usr/sbin/dockerd
if [ ! -x "$DOCKERD" ]; then
  echo "start-docker: dockerd not found (install docker.io via scripts/install-system.sh)" >&2
  exit 1
fi

# A stale pid file from a dead daemon blocks a new start.
if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
  rm -f /var/run/docker.pid
fi

echo "start-docker: starting $DOCKERD (log: $LOG)"
setsid nohup "$DOCKERD" --bridge=none --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false \
  >>"$LOG" 2>&1 </dev/null &
pid=$!
echo "$pid" > /tmp/dockerd.start-docker.pid

end=$((SECONDS + DEADLINE_S))
while [ $SECONDS -lt $end ]; do
  if docker info >/dev/null 2>&1; then
    echo "start-docker: daemon up (pid $pid) after $((SECONDS - end + DEADLINE_S))s"
    exit 0
  fi
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "start-docker: dockerd exited early; log tail:" >&2
    tail -n 40 "$LOG" >&2
    exit 1
  fi
  sleep 0.5
done
echo "start-docker: daemon did not answer within ${DEADLINE_S}s; log tail:" >&2
tail -n 40 "$LOG" >&2
exit 1
