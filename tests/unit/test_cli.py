"""The ``discovery`` command: the demo (the README's main job) and the small subcommands."""

from __future__ import annotations

import subprocess
import sys

import pytest

from discovery.cli import main


def test_demo_runs_on_the_embedded_backend() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "discovery.cli", "demo", "--ttl", "0.5"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "services in namespace 'demo': api, web" in out
    assert "round-robin picks over web (answered from the watch cache): web-1 web-2 web-3 web-1 web-2 web-3" in out
    assert ">>> web-3 left the watcher's snapshot after" in out
    assert "round-robin picks over UP web instances: web-1 web-1 web-1 web-1" in out
    assert out.rstrip().endswith("demo done.")


def test_bad_url_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--url", "memory://?bogus=1", "services"]) == 2
    assert "ConfigurationError" in capsys.readouterr().err


def test_list_and_services_on_empty_store(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--url", "memory:///cli-empty", "list", "web", "--all"]) == 0
    assert "ID" in capsys.readouterr().out
    assert main(["--url", "memory:///cli-empty", "list", "Bad"]) == 2
    assert "ValidationError" in capsys.readouterr().err
