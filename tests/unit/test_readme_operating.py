"""The README's "Operating it" examples run as pasted (issue 18, item 5): each python block in that section runs
in a fresh interpreter and prints what its comments promise. Fixed ports in the blocks (8081, 9464) are swapped
for free ones, since the machine is shared.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.client.conftest import dead_ports

ROOT = Path(__file__).resolve().parents[2]
#: What each block prints (stdout and stderr together), in README order.
EXPECTED = [
    ["INFO discovery.connection: memory connection connected", "registration default/orders/orders-1 registered",
     "registration default/orders/orders-1 deregistered"],
    ["200 connected"],
    ["connected"],
    ["discovery_picks_total{namespace=\"default\",service=\"orders\"} 1.0"],
    ["'discovery.connection.transitions', 'discovery.connections'"],
]
FIXED_PORTS = ("8081", "9464")


def _operating_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Operating it\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_section_has_one_expectation_per_block() -> None:
    assert len(_operating_blocks()) == len(EXPECTED)


@pytest.mark.parametrize(("index", "expected"), list(enumerate(EXPECTED)), ids=["logging", "readiness", "connection",
                                                                                 "prometheus", "opentelemetry"])
def test_an_operating_example_runs(index: int, expected: list[str], tmp_path: Path) -> None:
    code = _operating_blocks()[index]
    for fixed, free in zip(FIXED_PORTS, dead_ports(len(FIXED_PORTS)), strict=True):
        code = code.replace(fixed, str(free))
    script = tmp_path / "example.py"
    script.write_text(code, encoding="utf-8")
    env = {key: value for key, value in os.environ.items() if key != "DISCOVERY_URL"}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env,
                          cwd=tmp_path, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    for line in expected:
        assert line in output, output
