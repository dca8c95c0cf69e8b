"""The README's "Proxyless gRPC" example: a gRPC server that registers itself as ``orders``, and a client that
dials ``xds:///orders`` through ``discovery xds``.

    python examples/xds_orders.py serve orders-1      # registers in $DISCOVERY_URL until Ctrl-C/SIGTERM
    python examples/xds_orders.py call xds:///orders 30   # needs GRPC_XDS_BOOTSTRAP; prints calls per server

No .proto is needed: the method takes and returns raw bytes (the server answers with its instance id).
"""

from __future__ import annotations

import collections
import contextlib
import signal
import sys
import threading
from concurrent import futures

import grpc

from discovery import Instance, Registry

METHOD = "/example.Orders/Who"


def serve(instance_id: str) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.method_handlers_generic_handler(
        "example.Orders", {"Who": grpc.unary_unary_rpc_method_handler(lambda _req, _ctx: instance_id.encode())})
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with Registry.connect() as registry:  # $DISCOVERY_URL
        registry.register(Instance("orders", instance_id, "127.0.0.1", port))
        print(f"serving {instance_id} on 127.0.0.1:{port}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    server.stop(1)


def call(target: str, count: int) -> None:
    with grpc.insecure_channel(target) as channel:
        who = channel.unary_unary(METHOD)
        answers = collections.Counter(who(b"", timeout=10, wait_for_ready=True).decode() for _ in range(count))
    for instance_id, calls in sorted(answers.items()):
        print(f"{instance_id}: {calls} calls")


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "serve":
        serve(sys.argv[2])
    elif len(sys.argv) >= 3 and sys.argv[1] == "call":
        call(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 30)
    else:
        sys.exit(__doc__)
