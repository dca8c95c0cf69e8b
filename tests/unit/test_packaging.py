"""The README's module names and imports resolve (the same check scripts/check-wheel.sh runs on the installed
wheel), and the check catches a name that moved (the old ``discovery.httpx_transport``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "scripts" / "smoke_installed.py"


def _check_readme(readme: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SMOKE), str(readme), "--readme-only"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def test_every_module_the_readme_names_imports() -> None:
    result = _check_readme(ROOT / "README.md")
    assert result.returncode == 0, result.stderr
    assert "discovery.client.httpx_transport (module)" in result.stdout


@pytest.mark.parametrize(
    ("readme_text", "reason"),
    [
        ("```python\nfrom discovery.httpx_transport import DiscoveryTransport\n```\n",
         "discovery.httpx_transport (named in the README) is neither a module"),
        ("```python\nfrom discovery import Registry, NoSuchThing\n```\n", "NoSuchThing"),
        ("See `discovery.client.no_such_module` for details.\n",
         "discovery.client.no_such_module (named in the README) is neither a module"),
    ],
    ids=["moved module", "broken import line", "module named in prose"],
)
def test_a_readme_naming_what_does_not_exist_fails_the_check(tmp_path: Path, readme_text: str, reason: str) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(readme_text)
    result = _check_readme(readme)
    assert result.returncode == 1
    assert reason in result.stderr
