"""Client-side costs: a cached pick per balancer (µs), and the httpx transport's overhead per request.

    .venv/bin/python -m benchmarks.client_pick [--picks 200000] [--requests 2000] [--instances 10]

* pick: ``ServiceCache.pick()`` on a watched service (memory backend), each pick timed alone with
  ``perf_counter_ns`` minus the timer's own median cost; median and p99 per balancer. The reference row
  "registry.instances() (watched) + RoundRobin" is the same pick without a ServiceCache: a lookup answered from
  the watch's cached snapshot, filtered (status, selector) on every call.
* transport: GET of a tiny response from a local HTTP/1.1 keep-alive server, through plain httpx to the fixed
  URL ``http://127.0.0.1:<port>/`` versus ``http://bench/`` through ``DiscoveryTransport`` (sync) and
  ``AsyncDiscoveryTransport`` (async); blocks of the two alternate so drift hits both alike. Then the
  transport's own cost without the network: both clients wrap ``httpx.MockTransport`` answering in memory.
* drain: ``update(status=DRAINING)`` → the instance is gone from a second registry's ``ServiceCache``, on the
  memory backend or each ``--drain-url`` (e.g. the test harness's servers).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from discovery import Instance, Registry
from discovery.cli.tables import render_table
from discovery.client.balancers import (
    Balancer,
    ConsistentHash,
    PowerOfTwoChoices,
    RandomChoice,
    RoundRobin,
    WeightedRoundRobin,
    ZoneAware,
)
from discovery.client.cache import ServiceCache
from discovery.client.httpx_transport import AsyncDiscoveryTransport, DiscoveryTransport
from discovery.registry.async_registry import AsyncRegistry


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round((len(ordered) - 1) * q / 100)))
    return ordered[index]


def timer_cost(samples: int = 100_000) -> float:
    """Median nanoseconds of two back-to-back perf_counter_ns calls."""
    clock = time.perf_counter_ns
    costs = []
    for _ in range(samples):
        t0 = clock()
        costs.append(clock() - t0)
    return statistics.median(costs)


def time_each(call: Callable[[], object], count: int, overhead: float) -> list[float]:
    """Microseconds per call, each call timed alone."""
    clock = time.perf_counter_ns
    samples = []
    for _ in range(count):
        t0 = clock()
        call()
        samples.append(max(0.0, (clock() - t0 - overhead) / 1000))
    return samples


BALANCERS: list[tuple[str, Callable[[], Balancer], str | None]] = [
    ("RoundRobin", RoundRobin, None),
    ("RandomChoice", RandomChoice, None),
    ("WeightedRoundRobin (smooth)", WeightedRoundRobin, None),
    ("PowerOfTwoChoices", PowerOfTwoChoices, None),
    ("ZoneAware(RoundRobin)", lambda: ZoneAware("zone-a"), None),
    ("ConsistentHash (key)", ConsistentHash, "user-4711"),
]


def measure_picks(picks: int, instances: int) -> list[tuple[object, ...]]:
    rows: list[tuple[object, ...]] = []
    overhead = timer_cost()
    with Registry.connect("memory:///bench-picks") as registry:
        for n in range(instances):
            zone = "zone-a" if n % 2 else "zone-b"
            registry.register(Instance("bench", f"bench-{n:02d}", "127.0.0.1", 10000 + n, zone=zone, weight=1 + n % 4))
        for name, make, key in BALANCERS:
            with ServiceCache.open(registry, "bench", balancer=make()) as cache:
                pick = functools.partial(cache.pick, key)
                time_each(pick, 20_000, overhead)  # warm up (and build per-set structures)
                samples = time_each(pick, picks, overhead)
            rows.append((name, f"{statistics.median(samples):.3f}", f"{percentile(samples, 99):.3f}"))
        plain = RoundRobin()
        with registry.watch("bench"):  # watched, so the lookup is answered from the cached snapshot in this thread
            samples = time_each(lambda: plain.pick(registry.instances("bench")), picks // 10, overhead)
        rows.append(
            (
                "registry.instances() (watched) + RoundRobin",
                f"{statistics.median(samples):.3f}",
                f"{percentile(samples, 99):.3f}",
            )
        )
    return rows


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out as two writes; with Nagle on, the second waits ~40 ms for a delayed ACK.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        pass


def _alternate(
    first: Callable[[], object], second: Callable[[], object], requests: int
) -> tuple[list[float], list[float]]:
    a: list[float] = []
    b: list[float] = []
    block = 100
    for _ in range(max(1, requests // block)):
        for call, out in ((first, a), (second, b)):
            for _ in range(block):
                t0 = time.perf_counter_ns()
                call()
                out.append((time.perf_counter_ns() - t0) / 1000)
    return a, b


def _stats(name: str, samples: list[float], baseline: float | None) -> tuple[object, ...]:
    median = statistics.median(samples)
    extra = "-" if baseline is None else f"{median - baseline:+.1f}"
    return (name, f"{median:.1f}", f"{percentile(samples, 99):.1f}", extra)


def _canned(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, content=b"ok")


def measure_transport_in_memory(requests: int) -> list[tuple[object, ...]]:
    """The transport's own cost: the wrapped transport answers in memory (httpx.MockTransport), no network."""
    with Registry.connect("memory:///bench-mock") as registry:
        registry.register(Instance("bench", "bench-1", "127.0.0.1", 8080))
        with (
            httpx.Client(transport=httpx.MockTransport(_canned)) as plain,
            httpx.Client(transport=DiscoveryTransport(registry, transport=httpx.MockTransport(_canned))) as ours,
        ):
            for _ in range(500):
                plain.get("http://127.0.0.1:8080/")
                ours.get("http://bench/")
            base, mine = _alternate(
                lambda: plain.get("http://127.0.0.1:8080/"), lambda: ours.get("http://bench/"), requests
            )
    baseline = statistics.median(base)
    return [
        _stats("httpx.Client + MockTransport, fixed URL", base, None),
        _stats("httpx.Client + DiscoveryTransport(MockTransport)", mine, baseline),
    ]


def measure_transport(requests: int) -> list[tuple[object, ...]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = int(server.server_address[1])
    fixed = f"http://127.0.0.1:{port}/"
    rows: list[tuple[object, ...]] = []
    try:
        with Registry.connect("memory:///bench-http") as registry:
            registry.register(Instance("bench", "bench-1", "127.0.0.1", port))
            with httpx.Client() as plain, httpx.Client(transport=DiscoveryTransport(registry)) as discovered:
                for _ in range(200):
                    plain.get(fixed)
                    discovered.get("http://bench/")
                base, ours = _alternate(lambda: plain.get(fixed), lambda: discovered.get("http://bench/"), requests)
            baseline = statistics.median(base)
            rows.append(_stats("httpx.Client, fixed URL", base, None))
            rows.append(_stats("httpx.Client + DiscoveryTransport", ours, baseline))
        rows.extend(asyncio.run(_measure_async(port, requests)))
    finally:
        server.shutdown()
        server.server_close()
    return rows


async def _measure_async(port: int, requests: int) -> list[tuple[object, ...]]:
    fixed = f"http://127.0.0.1:{port}/"
    async with AsyncRegistry.connect("memory:///bench-http-async") as registry:
        await registry.register(Instance("bench", "bench-1", "127.0.0.1", port))
        async with (
            httpx.AsyncClient() as plain,
            httpx.AsyncClient(transport=AsyncDiscoveryTransport(registry)) as discovered,
        ):
            for _ in range(200):
                await plain.get(fixed)
                await discovered.get("http://bench/")
            base: list[float] = []
            ours: list[float] = []
            for _ in range(max(1, requests // 100)):
                for client, url, out in ((plain, fixed, base), (discovered, "http://bench/", ours)):
                    for _ in range(100):
                        t0 = time.perf_counter_ns()
                        await client.get(url)
                        out.append((time.perf_counter_ns() - t0) / 1000)
    baseline = statistics.median(base)
    return [
        _stats("httpx.AsyncClient, fixed URL", base, None),
        _stats("httpx.AsyncClient + AsyncDiscoveryTransport", ours, baseline),
    ]


def measure_drain(url: str, trials: int) -> tuple[object, ...]:
    """Seconds from ``update(status=DRAINING)`` (call start) to a second registry's cache no longer listing it."""
    from discovery import Status

    samples = []
    with Registry.connect(url) as server_side, Registry.connect(url) as client_side:
        registration = server_side.register(Instance("drain-bench", "drain-1", "127.0.0.1", 9000), ttl=5)
        with ServiceCache.open(client_side, "drain-bench") as cache:
            for _ in range(trials):
                _wait(lambda: len(cache.instances()) == 1)
                started = time.perf_counter()
                registration.update(status=Status.DRAINING)
                _wait(lambda: len(cache.instances()) == 0)
                samples.append((time.perf_counter() - started) * 1000)
                registration.update(status=Status.UP)
    scheme = url.split(":", 1)[0]
    return (scheme, trials, f"{statistics.median(samples):.1f}", f"{max(samples):.1f}")


def _wait(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the cache did not follow the change")
        time.sleep(0.0005)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--picks", type=int, default=200_000, help="timed picks per balancer")
    parser.add_argument("--requests", type=int, default=2000, help="timed requests per client")
    parser.add_argument("--instances", type=int, default=10, help="instances of the benchmarked service")
    parser.add_argument(
        "--drain-url",
        action="append",
        default=[],
        help="also measure update(DRAINING) -> out of a second registry's picks on this backend URL (repeatable)",
    )
    parser.add_argument("--drain-trials", type=int, default=20)
    args = parser.parse_args()
    print(f"Cached pick, {args.instances} instances, {args.picks} picks each (µs per pick, timer cost removed)")
    print(render_table(("BALANCER", "MEDIAN µs", "P99 µs"), measure_picks(args.picks, args.instances)))
    print()
    print(f"HTTP GET to a local keep-alive server, {args.requests} requests each (µs per request)")
    headers = ("CLIENT", "MEDIAN µs", "P99 µs", "OVERHEAD (median) µs")
    print(render_table(headers, measure_transport(args.requests)))
    print()
    print(f"The transport alone: the wrapped transport answers in memory, {args.requests * 5} requests each (µs)")
    print(render_table(headers, measure_transport_in_memory(args.requests * 5)))
    urls = args.drain_url or ["memory:///bench-drain"]
    print()
    print("update(status=DRAINING) -> the instance leaves another registry's ServiceCache (ms)")
    rows = [measure_drain(url, args.drain_trials) for url in urls]
    print(render_table(("BACKEND", "TRIALS", "MEDIAN ms", "MAX ms"), rows))


if __name__ == "__main__":
    main()
