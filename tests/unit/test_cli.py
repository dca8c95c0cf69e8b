"""The ``discovery`` command: the demo (the README's main job), the small subcommands, ``--help`` of every
subcommand (found by walking the click group), ``--version``, and the registration of subcommand modules."""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
import subprocess
import sys

import pytest

import discovery.cli
from discovery.cli import main
from discovery.cli.app import COMMAND_MODULES, cli, command_paths


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


@pytest.mark.parametrize("path", command_paths(), ids=" ".join)
def test_every_subcommand_answers_help(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*path, "--help"]) == 0
    assert f"Usage: discovery {' '.join(path)} " in capsys.readouterr().out


def test_version_is_the_distribution_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"discovery {importlib.metadata.version('service-discovery')}"


def test_every_module_with_commands_is_registered() -> None:
    """A subcommand module joins the command line by one line in COMMAND_MODULES; forgetting it fails here."""
    with_commands = {
        f"discovery.cli.{module.name}"
        for module in pkgutil.iter_modules(discovery.cli.__path__)
        if module.name != "__main__" and hasattr(importlib.import_module(f"discovery.cli.{module.name}"), "COMMANDS")
    }
    assert with_commands == set(COMMAND_MODULES)
    registered = {command.name for command in cli.commands.values()}
    listed = {command.name for name in COMMAND_MODULES for command in importlib.import_module(name).COMMANDS}
    assert registered == listed
