"""Every module of the library and of the three adapters logs under one tree: ``discovery.*``."""

from __future__ import annotations

import importlib
import logging
import pkgutil

import pytest

PACKAGES = ("discovery", "discovery_zookeeper", "discovery_etcd", "discovery_consul")


def _modules() -> list[str]:
    names: list[str] = []
    for package_name in PACKAGES:
        package = importlib.import_module(package_name)
        names.append(package_name)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{package_name}."):
            if not info.name.endswith(".__main__"):  # importing it would run the CLI
                names.append(info.name)
    return names


@pytest.mark.parametrize("module_name", _modules())
def test_module_loggers_are_under_the_discovery_tree(module_name: str) -> None:
    module = importlib.import_module(module_name)
    loggers = [value for value in vars(module).values() if isinstance(value, logging.Logger)]
    for logger in loggers:
        assert logger.name.startswith("discovery."), f"{module_name} logs to {logger.name!r}"


def test_backend_loggers_name_their_backend() -> None:
    for backend in ("zookeeper", "etcd", "consul"):
        module = importlib.import_module(f"discovery_{backend}.keepalive")
        names = {value.name for value in vars(module).values() if isinstance(value, logging.Logger)}
        assert names == {f"discovery.backends.{backend}.keepalive"}
