"""``python -m benchmarks run --backend all --quick|--full [--servers process|container] [--out DIR]``;
``python -m benchmarks table RESULTS_JSON`` prints a run as markdown.

Starts the servers with the test harness, runs every scenario for every chosen backend, prints the table and
writes ``results.json`` (and, when the anchor venv has matplotlib, the PNG plots) into ``--out``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import detection, lookup, propagation, registration, restore, scale
from benchmarks.context import ALL_BACKENDS, PROFILES, VENVS, RunContext
from benchmarks.procs import REPO_ROOT
from benchmarks.report import Report, Row, markdown_table, print_table

SCENARIO_RUNNERS: tuple[tuple[str, Callable[[RunContext, Report, str], None]], ...] = (
    ("1 propagation", propagation.run),
    ("2 registration", registration.run),
    ("3 detection", detection.run),
    ("4 restore", restore.run),
    ("5 lookup", lookup.run),
    ("6 scale", scale.run),
)


def default_provider() -> str:
    """Like the test harness: $DISCOVERY_TEST_SERVERS, else container when Docker answers, else process."""
    chosen = os.environ.get("DISCOVERY_TEST_SERVERS")
    if chosen:
        return chosen
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "info"], capture_output=True, check=False).returncode == 0:
        return "container"
    return "process"


def _version(command: list[str]) -> str:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr).strip() else "unknown"


def _pip_version(python: Path, package: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({package!r}))"
    return _version([str(python), "-c", code]) if python.exists() else "not installed"


def machine_facts(provider: str) -> dict[str, object]:
    """The machine and every version that matters to the numbers."""
    import psutil

    main = Path(sys.executable)
    cpu = "unknown"
    with open("/proc/cpuinfo", encoding="utf-8") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "servers": provider,
        "zookeeper": "3.8.0 (Debian)",
        "etcd": _version(["etcd", "--version"]),
        "consul": _version(["consul", "version"]),
        "java": _version(["java", "-version"]),
        "kazoo": _pip_version(main, "kazoo"),
        "aetcd": _pip_version(main, "aetcd"),
        "py-consul": _pip_version(main, "py-consul"),
        "tooz (zookeeper, etcd3gw)": _pip_version(VENVS / "tooz" / "bin" / "python", "tooz"),
        "tooz (consul)": _pip_version(VENVS / "tooz-consul" / "bin" / "python", "tooz"),
        "python-consul2": _pip_version(VENVS / "tooz-consul" / "bin" / "python", "python-consul2"),
        "etcd3gw": _pip_version(VENVS / "tooz" / "bin" / "python", "etcd3gw"),
        "curator": "5.4.0 (Debian libcurator-discovery-java)",
    }


def plot(json_path: Path, out: Path) -> str:
    """Draw the PNGs with the anchor venv's matplotlib; the message says what happened."""
    python = VENVS / "tooz" / "bin" / "python"
    if not python.exists():
        return "plots skipped: matplotlib lives in the anchor venv (bash benchmarks/setup_anchors.sh)"
    script = REPO_ROOT / "benchmarks" / "plots.py"
    done = subprocess.run([str(python), str(script), str(json_path), str(out)], capture_output=True, text=True,
                          check=False)
    return done.stdout.strip() if done.returncode == 0 else f"plots failed: {done.stderr.strip()[-500:]}"


def run(arguments: argparse.Namespace) -> int:
    """Run every scenario; write the JSON; print the table."""
    profile = PROFILES[arguments.profile]
    backends = ALL_BACKENDS if arguments.backend == "all" else tuple(arguments.backend.split(","))
    provider = arguments.servers or default_provider()
    out = Path(arguments.out)
    command = "python -m benchmarks " + " ".join(sys.argv[1:])
    report = Report(meta={"profile": profile.name, "backends": list(backends), "command": command,
                          "started": datetime.now(UTC).isoformat(timespec="seconds"),
                          "machine": machine_facts(provider)})
    context = RunContext(profile, provider)
    started = time.monotonic()
    try:
        context.start(backends)
        for title, runner in SCENARIO_RUNNERS:
            if arguments.only and title.split()[0] not in arguments.only.split(","):
                continue
            for backend in backends:
                print(f"[{time.monotonic() - started:6.0f} s] scenario {title} on {backend}", flush=True)
                try:
                    runner(context, report, backend)
                except Exception as error:  # one broken measurement must not lose the rest of the run
                    report.add(Row(title.replace(" ", "-"), backend, "ours", "", status="failed",
                                   note=f"{type(error).__name__}: {error}"))
    finally:
        context.close()
    report.meta["duration_s"] = round(time.monotonic() - started, 1)
    json_path = out / "results.json"
    report.write(json_path)
    print_table(report.rows)
    print(f"\nJSON: {json_path}")
    print(plot(json_path, out) if not arguments.no_plots else "plots skipped (--no-plots)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="run the benchmarks")
    run_parser.add_argument("--backend", default="all", help="all, or a comma list of memory,zookeeper,etcd,consul")
    group = run_parser.add_mutually_exclusive_group()
    group.add_argument("--quick", dest="profile", action="store_const", const="quick", help="CI smoke profile")
    group.add_argument("--full", dest="profile", action="store_const", const="full", help="the published run")
    run_parser.set_defaults(profile="quick")
    run_parser.add_argument("--servers", choices=("process", "container", "external"), default=None)
    run_parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results"))
    run_parser.add_argument("--only", default="", help="comma list of scenario numbers, e.g. 1,5 (debugging)")
    run_parser.add_argument("--no-plots", action="store_true")
    table_parser = commands.add_parser("table", help="print the markdown table and facts of a results.json")
    table_parser.add_argument("json")
    table_parser.add_argument("--before", default=None,
                              help="an earlier run's results.json: adds a before → after column of each row")
    arguments = parser.parse_args(argv)
    if arguments.command == "run":
        return run(arguments)
    return table(Path(arguments.json), Path(arguments.before) if arguments.before else None)


def table(json_path: Path, before_path: Path | None = None) -> int:
    """Print a results.json as the markdown of docs/benchmarks.md (facts, then the table; with ``before_path``, an
    earlier run's results.json, a ``before → after`` column)."""
    import json

    document = json.loads(json_path.read_text(encoding="utf-8"))
    meta = document["meta"]
    print(f"Command: `{meta['command']}` ({meta['profile']} profile, {meta.get('duration_s', '?')} s, "
          f"started {meta['started']})\n")
    print("| fact | value |\n| --- | --- |")
    for key, value in meta["machine"].items():
        print(f"| {key} | {value} |")
    print()
    before = None
    if before_path is not None:
        before = [Row(**row) for row in json.loads(before_path.read_text(encoding="utf-8"))["rows"]]
    print(markdown_table([Row(**row) for row in document["rows"]], before))
    return 0
