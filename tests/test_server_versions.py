"""The harness runs the server version it was asked for (``--zookeeper-version`` / ``--etcd-version``)."""

from __future__ import annotations

import json
import re
import time
import urllib.request

import pytest

from tests.harness import ServerHandle
from tests.harness.specs import SPECS, server_version, zk_four_letter_word

pytestmark = pytest.mark.servers

# The exact releases behind each selectable version (Debian bookworm's and trixie's packages).
RELEASES = {"zookeeper": {"3.8": "3.8.0", "3.9": "3.9.3"}, "etcd": {"3.4": "3.4.23", "3.5": "3.5.16"}}


def test_zookeeper_runs_the_selected_version(zookeeper_server: ServerHandle) -> None:
    deadline = time.monotonic() + 15  # right after start "srvr" may answer "not currently serving requests"
    while True:
        answer = zk_four_letter_word(zookeeper_server.host, zookeeper_server.port, b"srvr")
        match = re.search(r"Zookeeper version: ([0-9.]+)", answer)
        if match is not None or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert match is not None, answer
    assert match.group(1) == RELEASES["zookeeper"][server_version("zookeeper")]


def test_etcd_runs_the_selected_version(etcd_server: ServerHandle) -> None:
    with urllib.request.urlopen(f"http://{etcd_server.host}:{etcd_server.port}/version", timeout=5) as response:
        reported = json.loads(response.read())
    assert reported["etcdserver"] == RELEASES["etcd"][server_version("etcd")]


def test_container_image_is_tagged_with_the_version() -> None:
    assert SPECS["etcd"].image == f"discovery-test/etcd:{server_version('etcd')}"
    assert SPECS["zookeeper"].image == f"discovery-test/zookeeper:{server_version('zookeeper')}"
