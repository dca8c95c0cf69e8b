"""Exit codes as documented (discovery.cli.session.EXIT_CODES, the README's table) for every command: 0, 1 not
found, 2 bad input, 3 unreachable, and Ctrl-C: SIGINT sent to the real process exits 130 after cleaning up
(``register`` deregisters first), SIGTERM exits 0; and the warning when no URL is configured."""

from __future__ import annotations

import signal
import uuid
from pathlib import Path

import pytest

from discovery import Instance, Registry
from discovery.cli import main
from discovery.cli.app import command_paths
from discovery.cli.session import EXIT_CODES
from tests.cli.support import Running, environment, run
from tests.harness import ServerHandle, free_port

MEMORY = f"memory:///exits-{uuid.uuid4().hex[:8]}"
#: An etcd URL where nothing listens, with a short timeout: unreachable (exit 3) in about a second.
DEAD = f"etcd://127.0.0.1:{free_port()}/dead?timeout=1"
BAD_MANIFEST = "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: 0}]}\n"

CASES = [
    (["services"], 0), (["services", "-n", "Bad_NS"], 2), (["services", "--url", DEAD], 3),
    (["list", "nothing-here"], 0), (["list", "web", "-l", "tier foo"], 2), (["list", "Bad_Name"], 2),
    (["list", "web", "--url", DEAD], 3),
    (["get", "services"], 0), (["get", "services", "missing"], 1), (["get", "services", "--url", DEAD], 3),
    (["get", "endpoints", "missing"], 1), (["get", "instances", "web", "-o", "xml"], 2),
    (["describe", "service", "missing"], 1), (["describe", "service", "Bad_Name"], 2),
    (["describe", "service", "x", "--url", DEAD], 3),
    (["delete", "service", "missing"], 1), (["delete"], 2), (["delete", "service", "x", "--url", DEAD], 3),
    (["apply", "-f", "BAD"], 2), (["apply", "-f", "/nonexistent.yaml"], 2), (["apply", "-f", "GOOD", "--url", DEAD], 3),
    (["drain", "web/missing"], 1), (["drain", "web"], 2), (["drain", "web/x", "--url", DEAD], 3),
    (["set-status", "web/missing", "UP"], 1), (["set-status", "web/x", "SLEEPY"], 2),
    (["set-status", "web/x", "down", "--url", DEAD], 3),
    (["register", "web", "w1", "127.0.0.1", "0"], 2), (["register", "web", "w1", "127.0.0.1", "80", "--url", DEAD], 3),
    (["watch", "Bad_Name"], 2), (["watch", "web", "-l", "a in b"], 2), (["watch", "web", "--url", DEAD], 3),
    (["proxy", "--url", DEAD], 3), (["dns", "--port", "0", "--url", DEAD], 3),
    (["xds", "--port", "0", "--url", DEAD], 3),
    (["demo", "--url", DEAD], 3), (["completion", "tcsh"], 2), (["completion", "bash"], 0),
    (["--url", "memory://?bogus=1", "services"], 2),
]


@pytest.mark.parametrize(("argv", "code"), CASES, ids=[" ".join(a).replace(DEAD, "DEAD") for a, _ in CASES])
def test_exit_code(argv: list[str], code: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.yaml").write_text(BAD_MANIFEST)
    (tmp_path / "good.yaml").write_text(BAD_MANIFEST.replace("port: 0", "port: 80"))
    argv = [{"BAD": str(tmp_path / "bad.yaml"), "GOOD": str(tmp_path / "good.yaml")}.get(a, a) for a in argv]
    if "--url" not in argv:
        argv = ["--url", MEMORY, *argv]
    assert main(argv) == code, capsys.readouterr()
    assert code in EXIT_CODES


def test_every_command_has_an_exit_code_case() -> None:
    covered = {tuple(w for w in argv[:2] if not w.startswith("-") and w[0].islower()) for argv, _ in CASES}
    for path in command_paths():
        if path in (("get",), ("describe",)):
            continue
        assert any(path == words[: len(path)] for words in covered), f"no exit-code case for {' '.join(path)}"


# -- SIGINT (Ctrl-C) and SIGTERM to the long-running commands ------------------------------------------------------

LONG_RUNNING = {
    "register": (["register", "web", "w1", "127.0.0.1", "8080"], r"registered default/web/w1"),
    "watch": (["watch", "web", "-o", "json"], r'"service":"web"'),
    "proxy": (["proxy", "--rescan-interval", "0.2"], r"proxy ready"),
    "dns": (["dns", "--port", "0", "--rescan-interval", "0.2"], r"dns ready on"),
    "xds": (["xds", "--port", "0"], r"xds ready on"),
}


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 0)], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("command", sorted(LONG_RUNNING))
def test_a_signal_stops_a_long_running_command_with_its_exit_code(command: str, signum: int, code: int) -> None:
    argv, ready = LONG_RUNNING[command]
    process = Running(*argv, "--url", f"memory:///signals-{uuid.uuid4().hex[:8]}")
    try:
        process.wait_for(ready)
        assert process.stop(signum) == code, process.stderr()
    finally:
        process.kill()
    if command == "register":
        assert process.wait_for("deregistered", timeout=5), "it deregistered before exiting"
    assert "Traceback" not in process.stderr()


@pytest.mark.servers
def test_ctrl_c_on_register_deregisters_before_exiting_130(etcd_server: ServerHandle) -> None:
    url = f"{etcd_server.url}/sigint-{uuid.uuid4().hex[:8]}?ttl=30"
    process = Running("register", "web", "w1", "127.0.0.1", "8080", "--url", url)
    with Registry.connect(url) as registry, registry.watch("web") as watch:
        try:
            process.wait_for("registered default/web/w1")
            watch.until(lambda s: s.ids() == {"w1"}, 15)
            assert process.stop(signal.SIGINT) == 130
        finally:
            process.kill()
        # Gone at once, not after the 30 s TTL: it deregistered before exiting.
        watch.until(lambda s: len(s) == 0, 5)


# -- no URL configured ---------------------------------------------------------------------------------------------

WRITES = [["apply", "-f", "GOOD"], ["register", "web", "w1", "127.0.0.1", "80"], ["delete", "service", "x"],
          ["drain", "web/w1"], ["set-status", "web/w1", "UP"]]


@pytest.mark.parametrize("argv", WRITES, ids=" ".join)
def test_writing_without_a_url_warns_that_the_backend_dies_with_the_process(argv: list[str], tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(BAD_MANIFEST.replace("port: 0", "port: 80"))
    argv = [str(tmp_path / "good.yaml") if a == "GOOD" else a for a in argv]
    if argv[0] == "register":
        process = Running(*argv, env=environment())
        try:
            process.wait_for("registered")
            process.stop(signal.SIGTERM)
        finally:
            process.kill()
        err = process.stderr()
    else:
        err = run(*argv, env=environment(DISCOVERY_CLUSTER_IP_RANGE="127.252.0.0/24")).stderr
    assert err.startswith("discovery: warning: no --url and no DISCOVERY_URL: using a memory:// backend that lives "
                          "only in this process; what this command writes is gone when it exits"), err


def test_reading_without_a_url_warns_too_and_a_url_silences_it() -> None:
    assert "a memory:// backend that lives only in this process; it holds nothing that another process registered" \
        in run("get", "services").stderr
    assert run("get", "services", env=environment(url="memory://")).stderr == ""
    assert run("get", "services", "--url", "memory://").stderr == ""
    assert run("demo", "--ttl", "0.3", timeout=120).stderr == "", "the demo is meant for the embedded backend"


def test_the_exit_codes_are_in_the_help() -> None:
    shown = run("--help").stdout
    for code in EXIT_CODES:
        assert f"{code} " in shown
    assert "130 interrupted" in shown.replace("\n", " ").replace("  ", " ")


def test_an_instance_registered_elsewhere_is_not_in_a_per_process_memory_backend() -> None:
    """memory:// is per process: ``discovery drain`` in another process cannot reach this process's registration,
    whatever the store's name, and says it is not found (exit 1)."""
    url = f"memory:///per-process-{uuid.uuid4().hex[:8]}"
    with Registry.connect(url) as registry:
        registry.register(Instance("web", "w1", "127.0.0.1", 80))
        done = run("drain", "web/w1", "--url", url)
    assert done.returncode == 1
    assert "default/web/w1 is not registered" in done.stderr
