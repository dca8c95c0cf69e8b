"""The README's module names and imports resolve (the same check scripts/check-wheel.sh runs on the installed
wheel), and the check catches a name that moved (the old ``discovery.httpx_transport``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "scripts" / "smoke_installed.py"


def _check_readme(readme: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SMOKE), str(readme), "--readme-only"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def test_every_module_the_readme_names_imports() -> None:
    result = _check_readme(ROOT / "README.md")
    assert result.returncode == 0, result.stderr
    assert "discovery.client.httpx_transport (module)" in result.stdout


def test_a_moved_module_in_the_readme_fails_the_check(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("```python\nfrom discovery.httpx_transport import DiscoveryTransport\n```\n")
    result = _check_readme(readme)
    assert result.returncode == 1
    assert "discovery.httpx_transport (named in the README) is neither a module" in result.stderr


def test_a_broken_import_line_in_the_readme_fails_the_check(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("```python\nfrom discovery import Registry, NoSuchThing\n```\n")
    result = _check_readme(readme)
    assert result.returncode == 1
    assert "NoSuchThing" in result.stderr
