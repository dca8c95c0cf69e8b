"""Findings 2 and 13: hostile manifests are refused quickly, in bounded memory, with short typed errors, and a
file is applied whole or not at all.

Before the fix a 532-byte manifest (YAML aliases, the "billion laughs") with a wrong ``kind`` took 19.8 s and
3.6 GB through the error path, which called ``repr()`` on the expanded document (a 658-byte one ran out of
memory); deep nesting raised a raw ``RecursionError``; ``kind: List, items: 5`` a raw ``TypeError``; a file whose
second document conflicted left the first one written; two documents with one name applied as "created" then
"configured".

The bombs run in a child process with a 1 GB address-space limit, so that a regression fails this test instead
of exhausting the shared machine.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from discovery import AsyncRegistry, ValidationError
from discovery.cli import main
from discovery.services import ManifestError, Service, ServicePort, ServiceStore, parse_manifests
from tests.services.conftest import private_ranges


def laughs(levels: int, where: str) -> str:
    """A billion-laughs manifest: each level is nine aliases of the one before; ``where`` uses the last."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{n}: &a{n} [{','.join([f'*a{n - 1}'] * 9)}]" for n in range(1, levels)]
    body = "\n".join(lines)
    if where == "kind":
        return f"{body}\napiVersion: v1\nkind: *a{levels - 1}\n"
    return f"{body}\napiVersion: *a{levels - 1}\nkind: Service\n"


MEASURE = textwrap.dedent("""
    import json, resource, sys, time, tracemalloc
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
    from discovery.services import parse_manifests
    parse_manifests("apiVersion: v1\\nkind: Service\\nmetadata: {name: warm}\\nspec: {ports: [{port: 80}]}")
    text = sys.stdin.read()
    tracemalloc.start()
    started = time.process_time()
    try:
        parse_manifests(text, source="bomb.yaml")
        outcome = "accepted"
    except Exception as error:
        outcome = f"{type(error).__module__}.{type(error).__name__}: {str(error)[:2000]}"
    seconds = time.process_time() - started
    peak = tracemalloc.get_traced_memory()[1]
    print(json.dumps({"outcome": outcome, "seconds": seconds, "peak": peak, "message_length": len(outcome)}))
""")


@pytest.mark.parametrize(("levels", "where"), [(9, "kind"), (9, "apiVersion"), (11, "kind")])
def test_billion_laughs_is_refused_fast_in_bounded_memory(levels: int, where: str) -> None:
    text = laughs(levels, where)
    assert len(text) < 700, len(text)  # the finding's manifests were 532 and 658 bytes
    try:
        done = subprocess.run([sys.executable, "-c", MEASURE], input=text, capture_output=True, text=True,
                              timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("parsing the bomb did not end within 60 s")
    assert done.returncode == 0, f"the child died (memory limit?): {done.stderr[-2000:]}"
    result = json.loads(done.stdout)
    assert result["outcome"].startswith("discovery.services.manifest.ManifestError: manifest: bomb.yaml"), result
    assert "aliases" in result["outcome"]
    assert result["seconds"] < 0.1, result  # Done when: refused in < 0.1 s ...
    assert result["peak"] < 10 * 1024 * 1024, result  # ... with < 10 MB
    assert result["message_length"] < 400, result


def test_deep_nesting_is_a_typed_error() -> None:
    for text in ("[" * 5000 + "]" * 5000, "a:\n" + "".join(" " * n + "- \n" for n in range(1, 400)),
                 "{a: " * 3000 + "1" + "}" * 3000):
        with pytest.raises(ManifestError, match="nest"):
            parse_manifests(text)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("apiVersion: v1\nkind: List\nitems: 5\n", "items"),
        ("apiVersion: v1\nkind: List\nitems: {a: b}\n", "items"),
        ("apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: " + "7" * 5000 + "}]}\n",
         "manifest"),
        ("a: !!python/object:os.system {}\n", "manifest"),
        ("x" * (300 * 1024), "manifest"),
    ],
)
def test_malformed_manifests_are_typed_errors(text: str, field: str) -> None:
    with pytest.raises(ManifestError) as refused:
        parse_manifests(text)
    assert refused.value.field == field
    assert len(str(refused.value)) < 500


def test_errors_quote_clipped_values_never_whole_documents() -> None:
    huge = "k" * 100_000
    cases = [
        f"apiVersion: v1\nkind: {huge}\n",
        f"apiVersion: {huge}\nkind: Service\n",
        "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80, targetPort: " + huge + "}]}\n",
        "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80, protocol: " + huge + "}]}\n",
        "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}], type: " + huge + "}\n",
        "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}], externalIPs: [" + huge
        + "]}\n",
        "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}], "
        + ", ".join(f"x{n}: 1" for n in range(3000)) + "}\n",
        f"apiVersion: v1\nkind: Service\nmetadata: {{name: a, {huge}: 1}}\nspec: {{ports: [{{port: 80}}]}}\n",
    ]
    for text in cases:
        with pytest.raises(ValidationError) as refused:
            parse_manifests(text)
        assert len(str(refused.value)) < 1200, str(refused.value)[:200]


SERVICE = """apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  selector: {{app: {name}}}
  ports: [{{port: {port}}}]
{extra}"""


def test_a_file_is_checked_whole_before_anything_is_written(memory_url: str, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    ranges = private_ranges()
    monkeypatch.setenv("DISCOVERY_CLUSTER_IP_RANGE", str(ranges.cluster_ips))
    monkeypatch.setenv("DISCOVERY_NODE_PORT_RANGE", f"{ranges.node_ports.start}-{ranges.node_ports.stop - 1}")
    owner = tmp_path / "owner.yaml"
    owner.write_text(SERVICE.format(name="api", port=80, extra=""))
    assert main(["--url", memory_url, "apply", "-f", str(owner)]) == 0
    capsys.readouterr()
    assert main(["--url", memory_url, "get", "services", "api"]) == 0
    [cluster_ip] = re.findall(r"^default\s+api\s+ClusterIP\s+(\S+)", capsys.readouterr().out, re.MULTILINE)

    bad = tmp_path / "bad.yaml"
    bad.write_text(SERVICE.format(name="first", port=80, extra="") + "---\n"
                   + SERVICE.format(name="second", port=80, extra=f"  externalIPs: [{cluster_ip}]\n"))
    assert main(["--url", memory_url, "apply", "-f", str(bad)]) == 2
    error = capsys.readouterr().err
    assert "default/api" in error and "default/second" in error
    assert main(["--url", memory_url, "get", "services", "-A"]) == 0
    listed = capsys.readouterr().out
    assert "first" not in listed and "second" not in listed, "no document of the refused file was written"


def test_the_same_service_twice_is_refused(memory_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    ranges = private_ranges()
    monkeypatch.setenv("DISCOVERY_CLUSTER_IP_RANGE", str(ranges.cluster_ips))
    twice = tmp_path / "twice.yaml"
    twice.write_text(SERVICE.format(name="web", port=80, extra="") + "---\n"
                     + SERVICE.format(name="web", port=81, extra=""))
    assert main(["--url", memory_url, "apply", "-f", str(twice)]) == 2
    assert "defined twice" in capsys.readouterr().err
    assert main(["--url", memory_url, "get", "services", "-A"]) == 0
    assert "web" not in capsys.readouterr().out


async def test_apply_all_writes_nothing_when_a_later_service_is_refused(memory_url: str) -> None:
    async with AsyncRegistry.connect(memory_url) as registry:
        store = ServiceStore(registry.backend, private_ranges())
        owner = (await store.apply(Service("api", selector={"app": "a"}, ports=(ServicePort(80),)))).service
        assert owner.virtual_ip is not None
        first = Service("first", selector={"app": "f"}, ports=(ServicePort(80),))
        second = Service("second", selector={"app": "s"}, ports=(ServicePort(80),), external_ips=(owner.virtual_ip,))
        with pytest.raises(ValidationError, match="default/api"):
            await store.apply_all([first, second])
        with pytest.raises(ValidationError, match="given twice"):
            await store.apply_all([first, first.with_changes(ports=(ServicePort(81),))])
        assert [s.name for s in await store.list(None)] == ["api"]
