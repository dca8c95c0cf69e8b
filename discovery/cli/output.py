"""What the commands print: consoles on stdout/stderr, the connecting spinner, one rich table per kind of object,
and the machine-readable formats of ``-o json|yaml|name`` (their documents are built in :mod:`discovery.cli.formats`).

On a terminal the tables have rich borders; into a pipe or a file they are plain aligned columns with no width
limit, so scripts (and the tests) can read them with ``awk``/``grep``. ``-o wide`` adds columns.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Literal, TextIO

import click
from rich import box
from rich.console import Console
from rich.table import Table

from discovery.core.models import Instance, Snapshot
from discovery.services import Endpoints, Service


def _console(stream: TextIO) -> Console:
    # Markup off: names and messages such as "spec.ports[0]" print as they are. Into a pipe or file: no width
    # limit (rich would truncate cells at 80 columns) and no box drawing, so scripts can read the columns.
    terminal = stream.isatty()
    return Console(file=stream, highlight=False, markup=False, soft_wrap=True, width=None if terminal else 4096)


def out() -> Console:
    """A console on the current stdout (looked up per call: tests and wrappers replace ``sys.stdout``)."""
    return _console(sys.stdout)


def err() -> Console:
    """A console on the current stderr."""
    return _console(sys.stderr)


@contextlib.contextmanager
def status(text: str, quiet: bool = False) -> Iterator[None]:
    """A spinner with ``text`` on stderr while the block runs (only on a terminal, and not when ``quiet``)."""
    if quiet or not err().is_terminal:
        yield
        return
    with err().status(text):
        yield


def new_table(*headers: str, title: str | None = None) -> Table:
    """A table with rich borders on a terminal, plain aligned columns otherwise."""
    table = Table(title=title, title_justify="left", box=box.HEAVY_HEAD if sys.stdout.isatty() else None,
                  pad_edge=False)
    for header in headers:
        table.add_column(header)
    return table


def _pairs(mapping: Iterable[tuple[str, object]], empty: str = "-") -> str:
    return ",".join(f"{k}={v}" for k, v in mapping) or empty


def instance_table(instances: Sequence[Instance], title: str | None = None, *, wide: bool = False) -> Table:
    """A table of instances; ``wide`` adds the namespace, the service and the named ports."""
    headers: tuple[str, ...] = ("ID", "ADDRESS", "STATUS", "ZONE", "WEIGHT", "LABELS")
    if wide:
        headers = ("NAMESPACE", "SERVICE", "ID", "ADDRESS", "PORTS", "STATUS", "ZONE", "WEIGHT", "LABELS")
    table = new_table(*headers, title=title)
    for i in instances:
        address = f"{i.address}:{i.port}"
        tail = (i.status.value, i.zone or "-", str(i.weight), _pairs(i.labels.items()))
        if wide:
            table.add_row(i.namespace, i.service, i.id, address, _pairs(i.ports.items()), *tail)
        else:
            table.add_row(i.id, address, *tail)
    return table


def snapshot_title(snapshot: Snapshot) -> str:
    """``<service>.<namespace>  revision <n>``, and a STALE note while the backend is unreachable."""
    title = f"{snapshot.service}.{snapshot.namespace}  revision {snapshot.revision}"
    if snapshot.stale:
        title += "  (STALE: backend unreachable, last known set)"
    return title


def snapshot_table(snapshot: Snapshot, instances: Sequence[Instance] | None = None, *, wide: bool = False) -> Table:
    """A titled table of a snapshot (of ``instances``, when a selector chose some of them)."""
    chosen = snapshot.instances if instances is None else instances
    return instance_table(chosen, snapshot_title(snapshot), wide=wide)


def service_table(services: Sequence[Service], *, wide: bool = False) -> Table:
    """``kubectl get services`` columns; ``wide`` adds the selector, the labels and the DNS name."""
    headers = ("NAMESPACE", "NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)")
    table = new_table(*headers, *(("SELECTOR", "LABELS", "DNS") if wide else ()))
    for service in services:
        external = [service.load_balancer_ip] if service.load_balancer_ip else []
        external += list(service.external_ips)
        if service.external_name:
            external = [service.external_name]
        ports = ",".join(
            f"{p.port}:{p.node_port}/{p.protocol}" if p.node_port else f"{p.port}/{p.protocol}" for p in service.ports
        )
        row = [service.namespace, service.name, service.type.value, service.cluster_ip or "-",
               ",".join(external) or "<none>", ports or "<none>"]
        if wide:
            row += [_pairs(service.selector.items(), "<none>"), _pairs(service.labels.items(), "<none>"),
                    service.dns_name()]
        table.add_row(*row)
    return table


def endpoints_table(all_endpoints: Sequence[Endpoints], *, wide: bool = False) -> Table:
    """One row per Service port: its endpoints as ``address:port`` list; ``wide`` adds the instance ids."""
    table = new_table("NAMESPACE", "NAME", "PORT", "ENDPOINTS", *(("INSTANCES",) if wide else ()))
    for endpoints in all_endpoints:
        for entry in endpoints.ports:
            targets = ",".join(f"{e.address}:{e.port}" for e in entry.endpoints) or "<none>"
            row = [endpoints.namespace, endpoints.name, entry.port.label, targets]
            if wide:
                row.append(",".join(e.instance.id for e in entry.endpoints) or "<none>")
            table.add_row(*row)
    return table


def key_value_table(rows: Sequence[tuple[str, str]]) -> Table:
    """``Key:  value`` lines, keys in bold (``describe``)."""
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(f"{key}:", value)
    return table


# -- machine-readable output ----------------------------------------------------------------------------------------

#: ``-o``: ``table`` (the default), ``wide`` (more columns), ``json``, ``yaml``, ``name`` (one name per line).
OutputFormat = Literal["table", "wide", "json", "yaml", "name"]
FORMATS: tuple[OutputFormat, ...] = ("table", "wide", "json", "yaml", "name")


def output_option(*formats: OutputFormat) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The ``-o/--output`` option offering ``formats`` (default: all), ``table`` when not given."""
    offered = formats or FORMATS
    return click.option("-o", "--output", "output", type=click.Choice(offered), default="table", show_default=True,
                        help="output format: " + "|".join(offered) + " (json and yaml read back into the model: "
                        "discovery.core.codec, discovery.services)")


def _write(text: str) -> None:
    # Plain text, not through rich: JSON and YAML must reach the pipe byte for byte, and each JSON line at once.
    sys.stdout.write(text)
    sys.stdout.flush()


def print_document(document: Any, output: OutputFormat) -> None:
    """``document`` as indented JSON or as YAML (block style, keys in the order given)."""
    if output == "json":
        _write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    elif output == "yaml":
        import yaml

        _write(yaml.safe_dump(document, sort_keys=False, allow_unicode=True, default_flow_style=False))
    else:  # pragma: no cover - callers choose json or yaml
        raise ValueError(output)


def print_json_line(document: Any) -> None:
    """``document`` as one compact JSON line, flushed at once (``watch -o json``: JSON lines)."""
    _write(json.dumps(document, separators=(",", ":"), ensure_ascii=False) + "\n")


def print_yaml_document(document: Any) -> None:
    """``document`` as one YAML document of a stream (``---`` first), flushed at once (``watch -o yaml``)."""
    import yaml

    _write(yaml.safe_dump(document, sort_keys=False, allow_unicode=True, explicit_start=True))


def print_names(names: Iterable[str]) -> None:
    """One name per line (``-o name``)."""
    _write("".join(f"{name}\n" for name in names))
