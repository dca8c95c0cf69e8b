"""The bootstrap a gRPC client reads (``GRPC_XDS_BOOTSTRAP`` = a file of it, or ``GRPC_XDS_BOOTSTRAP_CONFIG`` =
the JSON itself) to find this xDS server.

TLS uses gRPC's ``tls`` channel credentials (gRFC A65: ``ca_certificate_file``, and for mTLS
``certificate_file``/``private_key_file``); the shared token uses the ``jwt_token_file`` call credentials
(gRFC A97), which gRPC 1.85 reads only with ``GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS=true`` in the
client's environment.
"""

from __future__ import annotations

import json
import os
import secrets
from typing import Any

#: The environment variable gRPC needs before it honours ``call_creds`` in a bootstrap.
CALL_CREDS_ENV = "GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS"


def grpc_bootstrap(
    server: str,
    *,
    node_id: str | None = None,
    zone: str | None = None,
    ca: str | os.PathLike[str] | None = None,
    cert: str | os.PathLike[str] | None = None,
    key: str | os.PathLike[str] | None = None,
    token_file: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """A gRPC xDS bootstrap (as a dict; ``json.dumps`` it) for the xDS server at ``server`` (``host:port``).

    ``ca`` switches to TLS (the CA that signs the server's certificate), ``cert``/``key`` add a client
    certificate (mTLS), ``token_file`` a file holding the shared token (see :func:`discovery.xds.make_token`).
    """
    if (cert is None) != (key is None):
        raise ValueError("give both cert and key, or neither")
    if (cert is not None or token_file is not None) and ca is None:
        raise ValueError("a client certificate or a token needs TLS: give ca")
    credentials: dict[str, Any] = {"type": "insecure"}
    if ca is not None:
        config = {"ca_certificate_file": os.fspath(ca)}
        if cert is not None and key is not None:
            config |= {"certificate_file": os.fspath(cert), "private_key_file": os.fspath(key)}
        credentials = {"type": "tls", "config": config}
    entry: dict[str, Any] = {"server_uri": server, "channel_creds": [credentials], "server_features": ["xds_v3"]}
    if token_file is not None:
        entry["call_creds"] = [{"type": "jwt_token_file", "config": {"jwt_token_file": os.fspath(token_file)}}]
    node: dict[str, Any] = {"id": node_id or f"discovery-client-{secrets.token_hex(4)}", "cluster": "discovery"}
    if zone:
        node["locality"] = {"zone": zone}
    return {"xds_servers": [entry], "node": node}


def write_grpc_bootstrap(path: str | os.PathLike[str], server: str, **options: Any) -> str:
    """Write :func:`grpc_bootstrap` to ``path`` and return the path (for ``GRPC_XDS_BOOTSTRAP``)."""
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(grpc_bootstrap(server, **options), handle, indent=2)
    return os.fspath(path)
