"""What the commands print: consoles on stdout/stderr, the connecting spinner, and one rich table per kind of object.

On a terminal the tables have rich borders; into a pipe or a file they are plain aligned columns with no width
limit, so scripts (and the tests) can read them with ``awk``/``grep``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from typing import TextIO

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


def instance_table(instances: Sequence[Instance], title: str | None = None) -> Table:
    """A table of instances."""
    table = new_table("ID", "SERVICE", "ADDRESS", "PORTS", "STATUS", "ZONE", "WEIGHT", "LABELS", title=title)
    for i in instances:
        ports = ",".join(f"{k}={v}" for k, v in i.ports.items()) or "-"
        labels = ",".join(f"{k}={v}" for k, v in i.labels.items()) or "-"
        table.add_row(i.id, i.service, f"{i.address}:{i.port}", ports, i.status.value, i.zone or "-",
                      str(i.weight), labels)
    return table


def snapshot_table(snapshot: Snapshot) -> Table:
    """A titled table of a snapshot."""
    title = f"{snapshot.service}.{snapshot.namespace}  revision {snapshot.revision}"
    if snapshot.stale:
        title += "  (STALE: backend unreachable, last known set)"
    return instance_table(snapshot.instances, title)


def service_table(services: Sequence[Service]) -> Table:
    """``kubectl get services``-like columns."""
    table = new_table("NAMESPACE", "NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "SELECTOR")
    for service in services:
        external = [service.load_balancer_ip] if service.load_balancer_ip else []
        external += list(service.external_ips)
        if service.external_name:
            external = [service.external_name]
        ports = ",".join(
            f"{p.port}:{p.node_port}/{p.protocol}" if p.node_port else f"{p.port}/{p.protocol}" for p in service.ports
        )
        selector = ",".join(f"{k}={v}" for k, v in service.selector.items())
        table.add_row(service.namespace, service.name, service.type.value, service.cluster_ip or "-",
                      ",".join(external) or "<none>", ports or "<none>", selector or "<none>")
    return table


def endpoints_table(all_endpoints: Sequence[Endpoints]) -> Table:
    """One row per Service port: its endpoints as ``address:port`` list."""
    table = new_table("NAMESPACE", "NAME", "PORT", "ENDPOINTS")
    for endpoints in all_endpoints:
        for entry in endpoints.ports:
            targets = ",".join(f"{e.address}:{e.port}" for e in entry.endpoints) or "<none>"
            table.add_row(endpoints.namespace, endpoints.name, entry.port.label, targets)
    return table


def key_value_table(rows: Sequence[tuple[str, str]]) -> Table:
    """``Key:  value`` lines, keys in bold (``describe``)."""
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(f"{key}:", value)
    return table
