"""The README's "Operating it" command-line example, run as written (bash) against a harness etcd: every output
its comments promise appears, in order."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import uuid
from pathlib import Path

import psutil
import pytest

from tests.harness import ServerHandle

pytestmark = [pytest.mark.servers, pytest.mark.timeout(180)]

REPO = Path(__file__).resolve().parents[2]


def readme_example() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    found = re.search(r"<!-- cli-example -->\n```bash\n(.*?)```", text, re.S)
    assert found is not None, "the README lost its command-line example block"
    return found.group(1)


def promised(example: str) -> list[str]:
    """What the example's comments say a command prints (``# ...`` after a command; not the explanatory ones)."""
    return [m.group(1).strip() for m in re.finditer(r"\S.*?\s#\s+(.+)$", example, re.M)
            if not m.group(1).startswith("one JSON line")]


def kill_marked(marker: str) -> None:
    """End every process the example started and left running (they carry our marker in their environment)."""
    for process in psutil.process_iter(["pid"]):
        try:
            if process.environ().get("CLI_README_RUN") == marker:
                os.kill(process.pid, signal.SIGKILL)
        except (psutil.Error, ProcessLookupError):
            continue


def test_the_operating_example_runs_as_written(etcd_server: ServerHandle, tmp_path: Path) -> None:
    example = readme_example()
    marker = uuid.uuid4().hex
    env = dict(os.environ, DISCOVERY_URL=f"{etcd_server.url}/readme-ops-{marker[:8]}", DEMO=str(tmp_path),
               CLI_README_RUN=marker)
    try:
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", example], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=90)
    except subprocess.TimeoutExpired as stuck:
        kill_marked(marker)
        logs = "".join(f"\n--- {log.name}\n{log.read_text()}" for log in tmp_path.glob("*"))
        pytest.fail(f"the example did not finish in 90 s; stdout: {stuck.stdout!r}{logs}")
    kill_marked(marker)
    logs = "".join(f"\n--- {log.name}\n{log.read_text()}" for log in tmp_path.glob("*"))
    assert done.returncode == 0, done.stdout + done.stderr + logs
    lines = done.stdout.splitlines()
    expected = promised(example)
    assert len(expected) == 9, expected
    position = 0
    for line in expected:
        assert line in lines[position:], f"{line!r} not printed (in order); stdout: {done.stdout}{logs}"
        position = lines.index(line, position) + 1
