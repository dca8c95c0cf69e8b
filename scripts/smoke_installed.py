"""What scripts/check-wheel.sh runs with the python of a fresh venv that holds the wheel (installed non-editable).

Checks, each printed as one line: the package is the installed copy (not the source tree); ``discovery --version``
prints the distribution's version; ``discovery --help`` and ``--help`` of every subcommand (found by walking the
click group, so new commands are covered without being listed here) exit 0; ``discovery demo`` runs to its end;
every module or name the README mentions imports (``discovery.x.y``, ``discovery_etcd``, ...: a module, an
attribute of one, or an entry-point group of the distribution) and every import line of its Python blocks runs.

Usage: python -I smoke_installed.py README.md [--readme-only]   (exit 1 on the first failure, with the reason)
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

DISTRIBUTION = "service-discovery"
#: The adapters log under discovery.backends.<backend>.<module>: such names in the README are loggers, not modules.
LOGGER_TREE = "discovery.backends."
#: Names the README shows that are not modules: loggers (discovery.connection), OpenTelemetry metric names
#: (discovery.connections, discovery.connection.transitions, ...) and httpx response extension keys.
NOT_MODULES = frozenset({
    "discovery.connection", "discovery.connections", "discovery.connection.transitions", "discovery.instance",
    "discovery.attempts", "discovery.picks", "discovery.pick_failures", "discovery.registrations",
    "discovery.set_aside_instances", "discovery.stale_snapshots",
})
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
IMPORT_LINE = re.compile(r"^[ \t]*((?:from[ \t]+[\w.]+[ \t]+)?import[ \t]+[^#\n]+)", re.MULTILINE)


def fail(message: str) -> NoReturn:
    print(f"FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def check_installed_copy() -> None:
    """The package must come from this venv's site-packages, installed from a wheel (not editable)."""
    import discovery

    location = Path(discovery.__file__).resolve()
    if not location.is_relative_to(Path(sys.prefix).resolve()):
        fail(f"discovery was imported from {location}, not from the venv {sys.prefix}")
    direct_url = importlib.metadata.distribution(DISTRIBUTION).read_text("direct_url.json")
    if direct_url and json.loads(direct_url).get("dir_info", {}).get("editable"):
        fail("the distribution is an editable install")
    print(f"ok  installed copy: {location.parent}")


def run_command(*words: str, timeout: float = 60) -> str:
    """Run the installed ``discovery`` script; its stdout, or fail with its stderr."""
    script = Path(sys.executable).parent / "discovery"
    result = subprocess.run([str(script), *words], capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        fail(f"discovery {' '.join(words)} exited {result.returncode}: {result.stderr.strip()[-2000:]}")
    return result.stdout


def check_command_line() -> None:
    version = importlib.metadata.version(DISTRIBUTION)
    printed = run_command("--version").strip()
    if printed != f"discovery {version}":
        fail(f"discovery --version printed {printed!r}, the distribution is {version}")
    print(f"ok  discovery --version: {printed}")
    run_command("--help")
    print("ok  discovery --help")
    from discovery.cli.app import command_paths  # after --help: a broken CLI fails above with the command's error

    paths = command_paths()
    for path in paths:
        run_command(*path, "--help")
    print(f"ok  --help of {len(paths)} subcommands: {', '.join(' '.join(path) for path in paths)}")
    output = run_command("demo", timeout=180)
    if not output.rstrip().endswith("demo done."):
        fail(f"discovery demo did not finish; its output ends with {output[-500:]!r}")
    print("ok  discovery demo")


def resolve(name: str, groups: set[str]) -> str:
    """How ``name`` resolves ("module", "attribute", "entry-point group", "logger name"); fail if it does not."""
    if name.startswith(LOGGER_TREE) or name in NOT_MODULES:
        return "logger, metric or extension name"
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            target: object = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:  # the module exists but needs something that is missing
                fail(f"import {module_name} (named in the README): {error}")
            continue
        for attribute in parts[cut:]:
            if not hasattr(target, attribute):
                break
            target = getattr(target, attribute)
        else:
            return "module" if cut == len(parts) else "attribute"
        break
    if name in groups:
        return "entry-point group"
    fail(f"{name} (named in the README) is neither a module, an attribute of one, nor an entry-point group")


def check_readme(readme: Path) -> None:
    text = readme.read_text()
    distribution = importlib.metadata.distribution(DISTRIBUTION)
    groups = {entry.group for entry in distribution.entry_points}
    packages = sorted((distribution.read_text("top_level.txt") or "discovery").split(), key=len, reverse=True)
    # One of our top-level packages, then attributes; not after "-", "/" or "." (so neither "service-discovery"
    # nor a path such as "etcd://h/discovery"), nor followed by more of a word (a fixture "discovery_url").
    ours = re.compile(rf"(?<![\w./-])((?:{'|'.join(packages)})(?:\.[A-Za-z_]\w*)*)(?!\w)")
    names = sorted(set(ours.findall(text)))
    kinds = {name: resolve(name, groups) for name in names}
    print(f"ok  {len(names)} names the README mentions resolve: "
          + ", ".join(f"{name} ({kind})" for name, kind in kinds.items()))
    imports = [line.strip() for block in PYTHON_BLOCK.findall(text) for line in IMPORT_LINE.findall(block)]
    for line in imports:
        try:
            exec(line, {})
        except ImportError as error:
            fail(f"README import {line!r}: {error}")
    print(f"ok  {len(imports)} import lines of the README's Python blocks run: {'; '.join(imports)}")


def main(arguments: list[str]) -> None:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # "ok" lines in order with FAILED
    readme = Path(arguments[0])
    if "--readme-only" not in arguments:
        check_installed_copy()
        check_command_line()
    check_readme(readme)


if __name__ == "__main__":
    main(sys.argv[1:])
