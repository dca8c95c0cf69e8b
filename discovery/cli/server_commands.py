"""Server subcommands: ``proxy`` (an L4 TCP proxy serving Services) and ``dns`` (``<svc>.<ns>.svc.cluster.local``).

Both read the Services and their endpoints through one :class:`~discovery.services.ServiceCatalog`, print one
"ready" line (scripts and tests wait for it) and run until SIGINT (exit 130) or SIGTERM (exit 0).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import click

from discovery.cli.output import new_table, out, status
from discovery.cli.session import GlobalOptions, finish, stop_signals
from discovery.registry.async_registry import AsyncRegistry
from discovery.services import ServiceCatalog, ServiceStore

#: What a server command starts on a running catalog; it returns the coroutine function that closes the server.
ServerStarter = Callable[[ServiceCatalog], Awaitable[Callable[[], Awaitable[None]]]]


def serve_until_stopped(options: GlobalOptions, namespace: str | None, rescan: float, start: ServerStarter) -> None:
    """Run a catalog and a server on it until Ctrl-C (exit 130) or SIGTERM (exit 0)."""

    async def work(registry: AsyncRegistry) -> None:
        stop = stop_signals()
        catalog = ServiceCatalog(registry, ServiceStore(registry.backend), namespace=namespace,
                                 rescan_interval=rescan)
        with status("reading Service definitions"):
            await catalog.start()
        try:
            close = await start(catalog)
            try:
                code = await stop
            finally:
                await close()
        finally:
            stop.cancel()
            await catalog.close()
        out().print("stopped")
        finish(code)

    options.run(work, access="follow")


serve_namespace_option = click.option("-n", "--namespace", default=None,
                                      help="serve only this namespace (default: every namespace)")
rescan_option = click.option("--rescan-interval", type=float, default=2.0, show_default=True,
                             help="seconds between re-reads of a namespace's service names")


@click.command()
@serve_namespace_option
@click.option("--node-address", default="127.0.0.1", show_default=True,
              help="address the node ports listen on (0.0.0.0 for every interface)")
@rescan_option
@click.pass_obj
def proxy(options: GlobalOptions, namespace: str | None, node_address: str, rescan_interval: float) -> None:
    """Serve Services as an L4 TCP proxy (ClusterIP, node ports, local load-balancer / external IPs)."""
    from discovery.services.proxy import ServiceProxy

    # Listener changes are the proxy's news: show them without -v.
    logging.getLogger("discovery.services.proxy").setLevel(min(logging.INFO, logging.getLogger().getEffectiveLevel()))

    async def start(catalog: ServiceCatalog) -> Callable[[], Awaitable[None]]:
        server = ServiceProxy(catalog, node_address=node_address)
        await server.start()
        table = new_table("ADDRESS", "SERVICE", "PORT", "KIND", title="listening")
        for spec in server.listeners:
            table.add_row(f"{spec.address}:{spec.port}", f"{spec.namespace}/{spec.service}", spec.service_port,
                          spec.kind.value)
        out().print(table)
        out().print("proxy ready; Ctrl-C stops")
        return server.close

    serve_until_stopped(options, namespace, rescan_interval, start)


@click.command(name="dns")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", type=int, default=5353, show_default=True, help="UDP and TCP port (0 = any free port)")
@click.option("--domain", default="cluster.local", show_default=True, help="the zone served")
@click.option("--ttl", type=int, default=5, show_default=True, help="TTL of the answers (seconds)")
@serve_namespace_option
@rescan_option
@click.pass_obj
def dns_command(options: GlobalOptions, host: str, port: int, domain: str, ttl: int, namespace: str | None,
                rescan_interval: float) -> None:
    """Answer <svc>.<ns>.svc.cluster.local (A, SRV, CNAME) over UDP and TCP."""
    from discovery.services.dns import DnsServer

    async def start(catalog: ServiceCatalog) -> Callable[[], Awaitable[None]]:
        server = DnsServer(catalog, host=host, port=port, domain=domain, ttl=ttl)
        await server.start()
        out().print(f"dns ready on {server.host}:{server.port} (UDP and TCP) for {domain}; Ctrl-C stops")
        return server.close

    serve_until_stopped(options, namespace, rescan_interval, start)


#: Added to the ``discovery`` group by :mod:`discovery.cli.app`.
COMMANDS: list[click.Command] = [proxy, dns_command]
