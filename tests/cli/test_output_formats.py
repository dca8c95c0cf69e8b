"""``-o json|yaml|wide|name`` on every listing and on ``describe``: each machine-readable output is parsed back into
the model (instances with discovery.core.codec, Services with discovery.services) and compared with what the
registry holds; ``get services -o yaml`` applies again unchanged; ``--url`` and ``-v`` work after the subcommand."""

from __future__ import annotations

import io
import json
import logging
import signal
import uuid
from collections.abc import Iterator

import pytest
import yaml

from discovery import Instance, Registry, Status
from discovery.cli import main
from discovery.cli.app import command_paths
from discovery.core.codec import instance_from_dict, snapshot_from_dict
from discovery.services import parse_manifests, resolve_endpoints, service_from_manifest
from tests.cli.support import Running
from tests.harness import ServerHandle

MANIFEST = """apiVersion: v1
kind: Service
metadata: {name: shop, labels: {team: a}}
spec:
  selector: {app: shop}
  ports: [{name: http, port: 80, targetPort: web}]
---
apiVersion: v1
kind: Service
metadata: {name: cart}
spec:
  selector: {app: cart}
  ports: [{port: 81, targetPort: 9000}]
"""


@pytest.fixture
def url() -> str:
    return f"memory:///formats-{uuid.uuid4().hex[:12]}?ttl=5"


@pytest.fixture
def fleet(url: str) -> Iterator[list[Instance]]:
    """Instances registered in this process (the memory store is shared with in-process ``main()`` calls)."""
    instances = [
        Instance("shop", "shop-1", "127.0.0.1", 8081, labels={"app": "shop", "tier": "front"}, ports={"web": 18081},
                 zone="z1", weight=3),
        Instance("shop", "shop-2", "127.0.0.2", 8082, labels={"app": "shop", "tier": "back"}, ports={"web": 18082},
                 status=Status.DRAINING),
        Instance("cart", "cart-1", "::1", 9000, labels={"app": "cart"}),
    ]
    with Registry.connect(url) as registry:
        for instance in instances:
            registry.register(instance)
        yield instances


def cli(capsys: pytest.CaptureFixture[str], *argv: str, code: int = 0) -> str:
    assert main(list(argv)) == code, capsys.readouterr()
    return capsys.readouterr().out


def test_list_as_json_and_yaml_reads_back_into_instances(url: str, fleet: list[Instance],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    shops = sorted((i for i in fleet if i.service == "shop"), key=lambda i: i.id)
    listed = json.loads(cli(capsys, "list", "shop", "--all", "-o", "json", "--url", url))
    assert [instance_from_dict(item) for item in listed] == shops
    listed = yaml.safe_load(cli(capsys, "--url", url, "get", "instances", "shop", "--all", "-o", "yaml"))
    assert [instance_from_dict(item) for item in listed] == shops
    up_front = json.loads(cli(capsys, "--url", url, "list", "shop", "-l", "tier in (front,back)", "-o", "json"))
    assert [instance_from_dict(item) for item in up_front] == [shops[0]], "UP only without --all"


def test_list_as_names_and_wide(url: str, fleet: list[Instance], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, "--url", url, "list", "shop", "--all", "-o", "name") == "shop/shop-1\nshop/shop-2\n"
    table = cli(capsys, "--url", url, "list", "shop", "--all").splitlines()
    assert table[0].split() == ["ID", "ADDRESS", "STATUS", "ZONE", "WEIGHT", "LABELS"]
    wide = cli(capsys, "--url", url, "list", "shop", "--all", "-o", "wide").splitlines()
    assert wide[0].split() == ["NAMESPACE", "SERVICE", "ID", "ADDRESS", "PORTS", "STATUS", "ZONE", "WEIGHT", "LABELS"]
    assert wide[1].split() == ["default", "shop", "shop-1", "127.0.0.1:8081", "web=18081", "UP", "z1", "3",
                               "app=shop,tier=front"]


def test_services_in_every_format(url: str, fleet: list[Instance], capsys: pytest.CaptureFixture[str]) -> None:
    assert json.loads(cli(capsys, "services", "-o", "json", "--url", url)) == ["cart", "shop"]
    assert yaml.safe_load(cli(capsys, "services", "-o", "yaml", "--url", url)) == ["cart", "shop"]
    names = cli(capsys, "services", "-o", "name", "--url", url)
    assert cli(capsys, "services", "--url", url) == names == "cart\nshop\n"
    wide = [line.split() for line in cli(capsys, "services", "-o", "wide", "--url", url).splitlines()]
    assert wide == [["NAME", "INSTANCES", "UP"], ["cart", "1", "1"], ["shop", "2", "1"]]


def test_services_as_yaml_apply_again_unchanged(url: str, fleet: list[Instance], capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(MANIFEST))
    assert "service/shop created" in cli(capsys, "--url", url, "apply", "-f", "-")
    exported = cli(capsys, "--url", url, "get", "services", "-o", "yaml")
    document = yaml.safe_load(exported)
    assert document["kind"] == "List" and [item["metadata"]["name"] for item in document["items"]] == ["cart", "shop"]
    services = [loaded.service for loaded in parse_manifests(exported)]
    one = json.loads(cli(capsys, "--url", url, "get", "services", "shop", "-o", "json"))
    assert service_from_manifest(one).service == services[1]
    assert services[1].cluster_ip is not None, "what was allocated is in the output"

    monkeypatch.setattr("sys.stdin", io.StringIO(exported))
    applied = cli(capsys, "--url", url, "apply", "-f", "-")
    assert applied == "service/cart unchanged\nservice/shop unchanged\n"
    assert cli(capsys, "--url", url, "get", "services", "-o", "name") == "service/cart\nservice/shop\n"
    wide = cli(capsys, "--url", url, "get", "services", "-o", "wide").splitlines()
    assert wide[0].split()[-3:] == ["SELECTOR", "LABELS", "DNS"]
    assert "app=shop" in wide[2] and "team=a" in wide[2] and "shop.default.svc.cluster.local" in wide[2]


def test_endpoints_and_describe_read_back_into_the_same_endpoints(
        url: str, fleet: list[Instance], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(MANIFEST))
    cli(capsys, "--url", url, "apply", "-f", "-")
    document = json.loads(cli(capsys, "--url", url, "get", "endpoints", "shop", "-o", "json"))
    service = service_from_manifest(document["service"]).service
    instances = [instance_from_dict(item) for item in document["instances"]]
    assert [i.id for i in instances] == ["shop-1"], "UP instances the selector picks"
    rebuilt = resolve_endpoints(service, instances)
    assert [[(e.instance.id, e.address, e.port) for e in entry.endpoints] for entry in rebuilt.ports] == \
        [[(e["id"], e["address"], e["port"]) for e in port["endpoints"]] for port in document["ports"]] == \
        [[("shop-1", "127.0.0.1", 18081)]]
    every = yaml.safe_load(cli(capsys, "--url", url, "get", "endpoints", "-o", "yaml"))
    assert [item["name"] for item in every] == ["cart", "shop"]
    assert cli(capsys, "--url", url, "get", "endpoints", "-o", "name") == "endpoints/cart\nendpoints/shop\n"
    wide = cli(capsys, "--url", url, "get", "endpoints", "shop", "-o", "wide").splitlines()
    assert wide[0].split() == ["NAMESPACE", "NAME", "PORT", "ENDPOINTS", "INSTANCES"]
    assert wide[1].split() == ["default", "shop", "http", "127.0.0.1:18081", "shop-1"]

    described = yaml.safe_load(cli(capsys, "--url", url, "describe", "service", "shop", "-o", "yaml"))
    assert described["dns"] == "shop.default.svc.cluster.local"
    assert described["srv"] == ["_http._tcp.shop.default.svc.cluster.local"]
    assert service_from_manifest(described["service"]).service == service
    assert described["ports"] == document["ports"]
    assert cli(capsys, "--url", url, "describe", "service", "shop", "-o", "name") == "service/shop\n"


def test_global_options_after_the_subcommand(url: str, fleet: list[Instance], capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCOVERY_URL", "memory:///formats-elsewhere")
    assert cli(capsys, "list", "cart", "-o", "name") == ""
    assert cli(capsys, "list", "cart", "-o", "name", "--url", url) == "cart/cart-1\n"
    assert cli(capsys, "--url", "memory:///formats-elsewhere", "list", "cart", "--url", url, "-o", "name") == \
        "cart/cart-1\n", "the one after the subcommand wins"
    assert cli(capsys, "get", "instances", "cart", "-o", "name", "--url", url) == "cart/cart-1\n"
    assert main(["get", "--url", url, "services", "-v"]) == 0
    assert logging.getLogger().level == logging.INFO, "-v after the subcommand raised the log level"
    assert main(["-v", "get", "--url", url, "services", "-v"]) == 0
    assert logging.getLogger().level == logging.DEBUG, "-v before and after add up"
    assert main(["get", "services", "--url", url]) == 0
    assert logging.getLogger().level == logging.WARNING


@pytest.mark.parametrize("path", [p for p in command_paths() if p != ("completion",)], ids=" ".join)
def test_every_subcommand_takes_the_global_options(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*path, "--help"]) == 0
    shown = capsys.readouterr().out
    assert "--url URL" in shown and "-v, --verbose" in shown


def test_a_bad_output_format_is_a_usage_error(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--url", url, "list", "shop", "-o", "xml"]) == 2
    assert "'xml' is not one of" in capsys.readouterr().err
    assert main(["--url", url, "watch", "shop", "-o", "name"]) == 2


@pytest.mark.servers
def test_watch_prints_json_lines_of_the_selected_instances(etcd_server: ServerHandle) -> None:
    """``watch -o json -l``: one JSON line per change, each a snapshot that reads back with snapshot_from_dict,
    holding only the selected instances; a change to an instance the selector leaves out prints nothing."""
    url = f"{etcd_server.url}/watch-json-{uuid.uuid4().hex[:8]}?ttl=30"
    watcher = Running("watch", "web", "-l", "tier=front", "-o", "json", "--url", url)
    try:
        first = snapshot_from_dict(json.loads(watcher.next_line()))
        assert (first.service, first.namespace, first.instances, first.stale) == ("web", "default", (), False)
        with Registry.connect(url) as registry:
            front = registry.register(Instance("web", "f1", "127.0.0.1", 8081, labels={"tier": "front"}))
            second = snapshot_from_dict(json.loads(watcher.next_line()))
            assert second.instances == (front.instance,) and second.revision > first.revision
            back = registry.register(Instance("web", "b1", "127.0.0.1", 8082, labels={"tier": "back"}))
            back.update(status=Status.DRAINING)  # neither change touches the selected set
            front.update(status=Status.DRAINING)
            third = snapshot_from_dict(json.loads(watcher.next_line()))
            assert third.instances == (front.instance,) and third.instances[0].status is Status.DRAINING
            assert watcher.stop(signal.SIGINT) == 130  # before the registry closes and deregisters them
        assert watcher.lines.empty(), "nothing was printed for the changes the selector leaves out"
    finally:
        watcher.kill()


def test_delete_takes_what_get_services_o_name_prints(url: str, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(MANIFEST))
    cli(capsys, "--url", url, "apply", "-f", "-")
    names = cli(capsys, "--url", url, "get", "services", "-o", "name").split()
    assert names == ["service/cart", "service/shop"]
    assert cli(capsys, "--url", url, "delete", *names) == 'service "cart" deleted\nservice "shop" deleted\n'
    assert main(["--url", url, "delete", "deployment/x"]) == 2
