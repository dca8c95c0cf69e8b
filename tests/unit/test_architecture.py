"""The package's shape, enforced: no import cycles, the core never imports an adapter, adapters never import each
other, no private name imported from another module, and every adapter has the same modules for the same jobs.

The import graph comes from grimp (the library behind import-linter); it counts imports inside functions too.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

import grimp
import pytest

CORE = "discovery"
ADAPTERS = ("discovery_zookeeper", "discovery_etcd", "discovery_consul")
#: The module every adapter has, each for the same job (its ``__init__`` docstring says which).
ADAPTER_MODULES = (
    "backend", "settings", "layout", "records", "connection", "keepalive", "watch", "definitions", "security",
)


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(CORE, *ADAPTERS, cache_dir=None)


def test_no_import_cycles(graph: grimp.ImportGraph) -> None:
    cycles = set()
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back is not None:
                cycles.add(" -> ".join((module, *back)))
    assert not cycles, "import cycles:\n" + "\n".join(sorted(cycles))


def test_the_core_never_imports_an_adapter(graph: grimp.ImportGraph) -> None:
    # Adapters are found through entry points (discovery.core.plugins), never imported by the core.
    for adapter in ADAPTERS:
        chain = graph.find_shortest_chains(importer=CORE, imported=adapter, as_packages=True)
        assert not chain, f"{CORE} imports {adapter}: {sorted(chain)}"


def test_adapters_never_import_each_other(graph: grimp.ImportGraph) -> None:
    for importer in ADAPTERS:
        for imported in ADAPTERS:
            if importer != imported:
                assert not graph.chain_exists(importer=importer, imported=imported, as_packages=True), (
                    f"{importer} imports {imported}"
                )


def _source_files() -> list[tuple[str, Path]]:
    files = []
    for package in (CORE, *ADAPTERS):
        spec = importlib.util.find_spec(package)
        assert spec is not None and spec.submodule_search_locations
        root = Path(next(iter(spec.submodule_search_locations)))
        for path in sorted(root.rglob("*.py")):
            parts = path.relative_to(root.parent).with_suffix("").parts
            module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            files.append((module, path))
    return files


def test_no_private_name_is_imported_from_another_module() -> None:
    # Hand-written (a dozen lines of ast): grimp's graph has modules, not names, and ruff's PLC2701 exempts imports
    # within one top-level package, which is where such an import would hide (``_status_set`` did).
    found = []
    for module, path in _source_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
                private = [
                    alias.name for alias in node.names
                    if alias.name.startswith("_") and not alias.name.endswith("__")  # dunders are public
                ]
                if private and node.module != module:
                    found.append(f"{module}:{node.lineno} imports {private} from {node.module}")
    assert not found, "\n".join(found)


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_every_adapter_has_the_same_modules_listed_in_its_docstring(adapter: str) -> None:
    package = importlib.import_module(adapter)
    for name in ADAPTER_MODULES:
        assert importlib.util.find_spec(f"{adapter}.{name}") is not None, f"{adapter} has no {name} module"
        assert f":mod:`.{name}` - " in (package.__doc__ or ""), f"{adapter}'s docstring does not list .{name}"
