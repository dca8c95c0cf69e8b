"""xDS control plane at scale: one ``discovery xds`` process serving S client streams for N services on etcd.

    python -m benchmarks.xds_scale [--streams 1000] [--services 1000] [--changes 20] [--workers 2]
                                   [--servers process|container] [--max-seconds 600]

* A harness etcd; N services (``svc-0..``), one instance each, plus ``orders`` with a real gRPC echo server;
  all registered by this process.
* ``discovery xds`` in its own process (the measured one: CPU seconds and RSS from /proc via psutil).
* S synthetic ADS streams split over ``--workers`` processes (:func:`stream_worker`), one channel (connection)
  each, as gRPC clients subscribe: LDS, RDS, CDS, EDS of their own service ``svc-(i mod N)`` and of the shared
  ``orders``; every reply is ACKed. They print ``READY`` when each stream has both assignments.
* Two real gRPC clients (grpcio's ``xds:///orders`` channel, :mod:`tests.xds.grpc_client`) calling in a loop.
* ``--changes`` times: a new echo server is registered as an ``orders`` instance, then deregistered.
  Measured: registry change (register/deregister returned) -> the assignment holding (or no longer holding)
  it reached each of the S streams (fan-out to every stream), and -> first/last call of a real client on it
  ("used"); and a change of one stream's own service -> that stream (single delivery).

Times are CLOCK_MONOTONIC in every process. Bounded: every wait has a deadline, ``--max-seconds`` for the
whole run; everything started is stopped by PID at the end. Prints tables; never asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import sys
import time
import uuid
from typing import Any

from benchmarks.procs import Worker
from benchmarks.stats import summarize

HOT = "orders"


# -- the stream worker ---------------------------------------------------------------------------------------------

async def _stream(index: int, address: str, names: list[str], events: list[list[Any]],
                  ready: asyncio.Event, pending: list[int]) -> None:
    import grpc
    from envoy.config.endpoint.v3 import endpoint_pb2
    from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

    from discovery.xds.resources import CLUSTER, ENDPOINTS, LISTENER, ROUTE

    channel = grpc.aio.insecure_channel(address)
    requests: asyncio.Queue[Any] = asyncio.Queue()

    async def outgoing() -> Any:
        while True:
            yield await requests.get()

    def request(type_url: str, resource_names: list[str], version: str = "", nonce: str = "") -> Any:
        message = discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=resource_names,
                                                 version_info=version, response_nonce=nonce)
        message.node.id = f"bench-{index}"
        return message

    clusters = [f"{n}.default" for n in names]
    subscriptions = {LISTENER: names, ROUTE: names, CLUSTER: clusters, ENDPOINTS: clusters}
    for type_url, resource_names in subscriptions.items():
        requests.put_nowait(request(type_url, resource_names))
    current: dict[str, set[int]] = {}
    call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(outgoing())
    async for response in call:
        requests.put_nowait(request(response.type_url, subscriptions[response.type_url], response.version_info,
                                    response.nonce))
        if response.type_url != ENDPOINTS:
            continue
        now = time.monotonic()
        for packed in response.resources:
            assignment = endpoint_pb2.ClusterLoadAssignment()
            packed.Unpack(assignment)
            ports = {lb.endpoint.address.socket_address.port_value
                     for group in assignment.endpoints for lb in group.lb_endpoints}
            before = current.get(assignment.cluster_name, set())
            events.extend([index, assignment.cluster_name, port, now, 1] for port in ports - before)
            events.extend([index, assignment.cluster_name, port, now, -1] for port in before - ports)
            current[assignment.cluster_name] = ports
        if not ready.is_set() and set(current) >= set(clusters):
            ready.set()
            pending[0] -= 1


def stream_worker(address: str, first: int, count: int, services: int) -> None:
    """Run ``count`` streams (indices ``first..``); print READY, then on each ``REPORT`` line the JSON list of
    ``[stream, cluster, port, t, +1 added / -1 removed]`` endpoint events since the previous report."""

    async def main() -> None:
        events: list[list[Any]] = []
        pending = [count]
        tasks = []
        for n in range(count):
            index = first + n
            tasks.append(asyncio.create_task(_stream(index, address, [f"svc-{index % services}", HOT], events,
                                                     asyncio.Event(), pending)))
        while pending[0] > 0:
            await asyncio.sleep(0.05)
        print("READY", flush=True)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := (await reader.readline()).decode().strip():
            if line == "REPORT":
                print("REPORT " + json.dumps(events), flush=True)
                events.clear()
        for task in tasks:
            task.cancel()

    asyncio.run(main())


# -- the driver ----------------------------------------------------------------------------------------------------

def _table(title: str, rows: list[tuple[str, dict[str, float]]]) -> None:
    print(f"\n{title}")
    print(f"{'measure':58} {'n':>6} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9}")
    for label, s in rows:
        if s.get("n"):
            print(f"{label:58} {int(s['n']):6d} {s['p50']:9.1f} {s['p99']:9.1f} {s['max']:9.1f}")
        else:
            print(f"{label:58} {0:6d} {'-':>9} {'-':>9} {'-':>9}")


async def drive(args: argparse.Namespace) -> None:
    import psutil

    from discovery import AsyncRegistry, Instance
    from tests.harness import start_server
    from tests.xds.support import EchoServer, XdsClientProcess, client_bootstrap

    deadline = time.monotonic() + args.max_seconds

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"--max-seconds {args.max_seconds} reached")
        return left

    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        etcd = stack.enter_context(start_server("etcd", args.servers))
        url = f"{etcd.url}/xds-bench-{uuid.uuid4().hex[:8]}?ttl=30"
        async with AsyncRegistry.connect(url) as registry:
            t = time.monotonic()
            base_port = 20000
            await asyncio.gather(*(registry.register(Instance(f"svc-{n}", "i0", "127.0.0.1", base_port + n % 20000))
                                   for n in range(args.services)))
            register_s = time.monotonic() - t
            echo = [EchoServer(f"e{n}") for n in range(2)]
            stack.callback(lambda: [e.stop() for e in echo])
            await registry.register(Instance(HOT, "e0", "127.0.0.1", echo[0].port))

            control = Worker([sys.executable, "-m", "discovery", "--url", url, "xds", "--port", "0"],
                             label="discovery xds")
            stack.callback(control.kill)
            fields = await asyncio.to_thread(control.expect, "xds", remaining())
            address = re.sub(r"[^0-9.:]", "", fields[3])
            plane = psutil.Process(control.process.pid)

            t = time.monotonic()
            workers = []
            per = -(-args.streams // args.workers)
            for w in range(args.workers):
                count = min(per, args.streams - w * per)
                if count <= 0:
                    break
                worker = Worker([sys.executable, "-m", "benchmarks.xds_scale", "--stream-worker", address,
                                 str(w * per), str(count), str(args.services)], label=f"streams {w}")
                stack.callback(worker.kill)
                workers.append(worker)
            for worker in workers:
                await asyncio.to_thread(worker.expect, "READY", remaining())
            connect_s = time.monotonic() - t
            clients = [XdsClientProcess(client_bootstrap(address)) for _ in range(args.clients)]
            for client in clients:
                stack.callback(client.close)
                await client.start(f"xds:///{HOT}")
                await client.wait_for_servers(f"xds:///{HOT}", ["e0"], timeout=remaining())

            cpu0 = sum(plane.cpu_times()[:2])
            rss_peak = plane.memory_info().rss
            add_fanout: list[float] = []
            del_fanout: list[float] = []
            single: list[float] = []
            used: list[float] = []
            unused: list[float] = []
            changes_t0 = time.monotonic()
            hot_times: list[tuple[float, float]] = []
            cold_times: dict[int, tuple[str, float]] = {}
            events: list[list[Any]] = []
            for worker in workers:  # drop the start-up events
                worker.send("REPORT")
                await asyncio.to_thread(worker.expect, "REPORT", min(120, remaining()))
            for change in range(args.changes):
                remaining()
                since = added = time.monotonic()  # changes are timed from the start of the registry call
                registration = await registry.register(Instance(HOT, "e1", "127.0.0.1", echo[1].port))
                for client in clients:
                    await client.wait_for_servers(f"xds:///{HOT}", ["e1"], timeout=min(30, remaining()))
                    used.append((await client.stats(f"xds:///{HOT}", since))["servers"]["e1"][1] - added)
                removed = time.monotonic()
                await registration.deregister()
                await asyncio.sleep(1.0)  # well past the removal's p99 before reading the clients' last call
                for client in clients:
                    last = (await client.stats(f"xds:///{HOT}", since))["servers"]["e1"][2]
                    unused.append(max(0.0, last - removed))
                own = change % args.services
                cold_times[40000 + change] = (f"svc-{own}.default", time.monotonic())
                cold = await registry.register(Instance(f"svc-{own}", f"c{change}", "127.0.0.1", 40000 + change))
                hot_times.append((added, removed))
                await asyncio.sleep(0.5)  # deregistering at once could be coalesced with the add on a busy stream
                await cold.deregister()
                rss_peak = max(rss_peak, plane.memory_info().rss)
            await asyncio.sleep(1.0)  # the last deliveries
            for worker in workers:
                worker.send("REPORT")
            for worker in workers:
                events.extend(json.loads(" ".join((await asyncio.to_thread(worker.expect, "REPORT",
                                                                           min(120, remaining())))[1:])))
            for _stream, cluster, port, t, sign in events:
                if cluster == f"{HOT}.default" and port == echo[1].port:
                    # the change it belongs to: the latest one of its kind that started before it arrived
                    starts = [a if sign > 0 else r for a, r in hot_times]
                    begun = [t0 for t0 in starts if t0 <= t]
                    if begun:
                        (add_fanout if sign > 0 else del_fanout).append(t - max(begun))
                elif sign > 0 and port in cold_times and cluster == cold_times[port][0]:
                    single.append(t - cold_times[port][1])
            change_s = time.monotonic() - changes_t0
            cpu = sum(plane.cpu_times()[:2]) - cpu0

    print(f"\nxDS scale: {args.streams} ADS streams ({args.workers} worker processes, one connection each) x "
          f"{args.services} services on etcd ({args.servers}); {args.clients} real gRPC clients; "
          f"{args.changes} changes; {os.cpu_count()} CPUs")
    print(f"registering {args.services} services: {register_s:.1f} s; all streams connected and holding both "
          f"assignments: {connect_s:.1f} s; run {time.monotonic() - started:.0f} s")
    _table("registry change -> assignment received / endpoint used", [
        (f"add -> EDS at every stream (fan-out to {args.streams})", summarize(add_fanout, 1e3)),
        (f"remove -> EDS at every stream (fan-out to {args.streams})", summarize(del_fanout, 1e3)),
        ("own service change -> its one stream", summarize(single, 1e3)),
        ("add -> first call on it by a real gRPC client", summarize(used, 1e3)),
        ("remove -> last call on it by a real gRPC client (0 = none after)", summarize(unused, 1e3)),
    ])
    print(f"\ncontrol plane process: CPU {cpu:.1f} s over {change_s:.1f} s of changes "
          f"({100 * cpu / change_s:.0f} % of one core); RSS peak {rss_peak / 2**20:.0f} MiB")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--servers", default="process", choices=["process", "container"])
    parser.add_argument("--max-seconds", type=float, default=600.0)
    parser.add_argument("--stream-worker", nargs=4, metavar=("ADDRESS", "FIRST", "COUNT", "SERVICES"))
    args = parser.parse_args(argv)
    if args.stream_worker:
        address, first, count, services = args.stream_worker
        stream_worker(address, int(first), int(count), int(services))
        return
    if not (1 <= args.streams <= 5000 and 1 <= args.services <= 20000 and 1 <= args.changes <= 500):
        parser.error("bounded: 1..5000 streams, 1..20000 services, 1..500 changes")
    asyncio.run(drive(args))


if __name__ == "__main__":
    main()
