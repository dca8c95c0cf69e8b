"""``discovery completion bash|zsh|fish`` prints click's completion script; with it, a real bash completes commands
and, read from a real etcd, service names, Service names and ``service/id`` instances (the URL from
``$DISCOVERY_URL`` or from ``--url`` typed before or after the subcommand)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from discovery import Instance, Registry
from tests.cli.support import environment, run
from tests.harness import ServerHandle

BIN = str(Path(sys.executable).parent)


@pytest.mark.parametrize(("shell", "marks"), [
    ("bash", ["_discovery_completion()", "_DISCOVERY_COMPLETE=bash_complete", "complete -o nosort -F "
              "_discovery_completion discovery"]),
    ("zsh", ["#compdef discovery", "_DISCOVERY_COMPLETE=zsh_complete", "compdef _discovery_completion discovery"]),
    ("fish", ["_DISCOVERY_COMPLETE=fish_complete", "complete --no-files --command discovery"]),
])
def test_the_script_of_each_shell(shell: str, marks: list[str]) -> None:
    done = run("completion", shell)
    assert done.returncode == 0, done.stderr
    for mark in marks:
        assert mark in done.stdout, done.stdout


def complete(words: str, env: dict[str, str]) -> list[str]:
    """What click answers bash for ``words`` (the last word is the one being completed), as values."""
    argv = words.split(" ")
    done = subprocess.run([f"{BIN}/discovery"], capture_output=True, text=True, timeout=60, env={
        **env, "_DISCOVERY_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": str(len(argv) - 1)})
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", "completion never writes to the terminal"
    return [line.split(",", 1)[1] for line in done.stdout.splitlines() if line]


def test_commands_and_options_complete_without_a_backend() -> None:
    env = environment()
    assert {"drain", "set-status", "completion", "list", "watch"} <= set(complete("discovery ", env))
    assert complete("discovery get ", env) == ["endpoints", "instances", "services"]
    assert "--output" in complete("discovery list web --", env)
    assert complete("discovery list web -o ", env) == ["table", "wide", "json", "yaml", "name"]
    assert complete("discovery list ", env) == [], "no URL configured: no service names, no error"


@pytest.fixture
def etcd_url(etcd_server: ServerHandle) -> Iterator[str]:
    url = f"{etcd_server.url}/complete-{uuid.uuid4().hex[:8]}?ttl=30"
    with Registry.connect(url) as registry:
        for service, ids in {"orders": ["o-1", "o-2"], "ordinal": ["n-1"], "payments": ["p-1"]}.items():
            for instance_id in ids:
                registry.register(Instance(service, instance_id, "127.0.0.1", 8080))
        registry.register(Instance("orders", "staging-1", "127.0.0.1", 8080, namespace="staging"))
        yield url


@pytest.mark.servers
def test_service_names_come_from_the_backend(etcd_url: str, tmp_path: Path) -> None:
    env = environment(url=etcd_url)
    assert complete("discovery list ord", env) == ["orders", "ordinal"]
    assert complete("discovery watch ", env) == ["orders", "ordinal", "payments"]
    assert complete("discovery list -n staging ", env) == ["orders"]
    assert complete("discovery drain orders/", env) == ["orders/o-1", "orders/o-2"]
    assert complete("discovery set-status pay", env) == ["payments/"]
    # the URL given on the command line, before or after the subcommand, instead of the environment
    bare = environment()
    assert complete(f"discovery --url {etcd_url} list ord", bare) == ["orders", "ordinal"]
    assert complete(f"discovery list --url {etcd_url} ord", bare) == ["orders", "ordinal"]

    (tmp_path / "shop.yaml").write_text("apiVersion: v1\nkind: Service\nmetadata: {name: shop}\n"
                                        "spec: {ports: [{port: 80}]}\n")
    applied = run("apply", "-f", str(tmp_path / "shop.yaml"),
                  env=environment(url=etcd_url, DISCOVERY_CLUSTER_IP_RANGE="127.253.0.0/24"))
    assert applied.returncode == 0, applied.stderr
    assert complete("discovery describe service ", env) == ["shop"]
    assert complete("discovery get endpoints s", env) == ["shop"]


def test_an_unreachable_backend_completes_nothing_quietly() -> None:
    from tests.harness import free_port

    env = environment(url=f"etcd://127.0.0.1:{free_port()}/x?timeout=1")
    assert complete("discovery list ", env) == []


@pytest.mark.servers
@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_a_real_bash_completes_service_names(etcd_url: str) -> None:
    script = (
        'eval "$(discovery completion bash)"\n'
        "COMP_WORDS=(discovery list ord); COMP_CWORD=2\n"
        "_discovery_completion discovery\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60,
                          env=environment(url=etcd_url, PATH=f"{BIN}:/usr/bin:/bin"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["orders", "ordinal"]
