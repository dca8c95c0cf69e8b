"""``discovery xds``: serve the backend's registrations to gRPC's xDS clients until Ctrl-C (exit 130) or SIGTERM
(exit 0); needs ``[xds]``.

Listed in :data:`discovery.cli.app.COMMAND_MODULES`.
"""

from __future__ import annotations

import sys

import click

from discovery.cli.output import err, out
from discovery.cli.session import EXIT_BAD_INPUT, GlobalOptions, finish, stop_signals
from discovery.registry.async_registry import AsyncRegistry


@click.command(name="xds")
@click.option("--listen", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", type=int, default=18000, show_default=True, help="port (0 = any free port)")
@click.option("--cert", default=None, metavar="PEM", help="server certificate: serve TLS (with --key)")
@click.option("--key", default=None, metavar="PEM", help="the certificate's unencrypted private key")
@click.option("--client-ca", default=None, metavar="PEM",
              help="require client certificates signed by this CA (mTLS)")
@click.option("--token-file", default=None, metavar="FILE",
              help="require 'authorization: Bearer <token>' with the token in FILE (needs TLS); "
                   "make one with --new-token")
@click.option("--new-token", "new_token", default=None, metavar="FILE",
              help="write a new shared token to FILE (mode 600) and exit")
@click.option("--lb-policy", type=click.Choice(["round_robin", "least_request", "ring_hash", "maglev"]),
              default="round_robin", show_default=True, help="the Clusters' load-balancing policy")
@click.option("--cluster-domain", default="cluster.local", show_default=True,
              help="the domain of Service targets (<svc>.<ns>.svc.<domain>:<port>)")
@click.option("--rescan-interval", type=float, default=2.0, show_default=True,
              help="seconds between re-reads of a Service target namespace's service names")
@click.pass_obj
def xds_command(settings: GlobalOptions, listen: str, port: int, cert: str | None, key: str | None,
                client_ca: str | None, token_file: str | None, new_token: str | None, lb_policy: str,
                cluster_domain: str, rescan_interval: float) -> None:
    """Serve xds:///<service>[.<namespace>] and xds:///<svc>.<ns>.svc.cluster.local:<port> to gRPC clients."""
    try:
        from discovery.xds import ServerTLS, XdsServer, make_token, read_token
    except ImportError as missing:
        err().print(f"discovery xds needs the [xds] extra ({missing.name} is missing): "
                    "pip install 'service-discovery[xds]'")
        sys.exit(EXIT_BAD_INPUT)
    if new_token is not None:
        import os

        descriptor = os.open(new_token, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="ascii") as handle:
            handle.write(make_token())  # no newline: gRPC sends the file's bytes as they are
        out().print(f"wrote a new token to {new_token}")
        return
    if (cert is None) != (key is None):
        raise click.UsageError("give both --cert and --key, or neither")
    if client_ca is not None and cert is None:
        raise click.UsageError("--client-ca needs TLS: give --cert and --key")
    tls = ServerTLS(cert, key, client_ca) if cert is not None and key is not None else None
    token = read_token(token_file) if token_file is not None else None

    async def work(registry: AsyncRegistry) -> None:
        stop = stop_signals()
        server = XdsServer(registry, host=listen, port=port, tls=tls, token=token, lb_policy=lb_policy,
                           cluster_domain=cluster_domain, rescan_interval=rescan_interval)
        await server.start()
        try:
            mode = "TLS" if tls is not None else "plain text"
            if tls is not None and tls.client_ca is not None:
                mode += ", client certificates required"
            if token is not None:
                mode += ", token required"
            out().print(f"xds ready on {server.address} ({mode}); Ctrl-C stops")
            code = await stop
        finally:
            stop.cancel()
            await server.close()
        out().print("stopped")
        finish(code)

    settings.run(work, access="follow")


COMMANDS = [xds_command]
