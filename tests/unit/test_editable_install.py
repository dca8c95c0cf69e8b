"""mypy sees the package and the adapters in the editable install ``scripts/setup-python.sh`` makes (issue 18)."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

SOURCES_PTH = Path(sysconfig.get_paths()["purelib"]) / "service_discovery_sources.pth"
USER_CODE = """\
import discovery
import discovery_etcd
from discovery.client.httpx_transport import DiscoveryTransport

reveal_type(discovery.Registry.connect)
reveal_type(discovery_etcd.EtcdBackend)
reveal_type(DiscoveryTransport)
"""


def test_mypy_run_outside_the_repository_sees_the_installed_packages(tmp_path: Path) -> None:
    if not SOURCES_PTH.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{SOURCES_PTH} is missing: CI must install with scripts/setup-python.sh")
        pytest.skip("this environment was not installed by scripts/setup-python.sh")
    (tmp_path / "user_code.py").write_text(USER_CODE)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "user_code.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=240, check=False,
    )
    assert "import-not-found" not in result.stdout, result.stdout
    assert 'Revealed type is "def (settings: discovery_etcd.settings.EtcdSettings)' in result.stdout, result.stdout
    assert "discovery.registry.blocking.Registry" in result.stdout, result.stdout
