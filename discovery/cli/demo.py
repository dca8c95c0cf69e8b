"""``discovery demo``: the README's main job (two services, a watcher, a death, a drain, picks) on any backend."""

from __future__ import annotations

import threading
import time

import click

from discovery.cli.session import GlobalOptions
from discovery.cli.tables import INSTANCE_HEADERS, instance_rows, render_snapshot, render_table
from discovery.client.balancers import RoundRobin
from discovery.core.models import Instance, Snapshot, Status
from discovery.registry.blocking import Registry

_print_lock = threading.Lock()


def say(text: str = "") -> None:
    """Print a block atomically (the watcher thread prints too)."""
    with _print_lock:
        print(text, flush=True)


def _watch_printer(registry: Registry, service: str, namespace: str, seen: list[Snapshot]) -> threading.Thread:
    watch = registry.watch(service, namespace)

    def run() -> None:
        try:
            for snapshot in watch:
                seen.append(snapshot)
                say(f"\n[watcher] {render_snapshot(snapshot)}")
        except Exception:  # the registry closed under us: the demo is over
            return

    thread = threading.Thread(target=run, name="demo-watcher", daemon=True)
    thread.start()
    return thread


def _wait_until(seen: list[Snapshot], predicate: object, timeout: float) -> float:
    started = time.monotonic()
    deadline = started + timeout
    while time.monotonic() < deadline:
        if seen and predicate(seen[-1]):  # type: ignore[operator]
            return time.monotonic() - started
        time.sleep(0.02)
    raise TimeoutError(f"the watcher did not see the change within {timeout:.1f} s")


def run_demo(url: str | None, ttl: float) -> int:
    """Register two services, watch one, kill an instance, drain another, and pick with round-robin."""
    namespace = "demo"
    with Registry.connect(url) as registry:
        caps = registry.capabilities
        if ttl < caps.min_ttl:  # register() refuses a TTL below the minimum; the demo takes the shortest allowed
            say(f"(the {caps.name} backend's minimum TTL is {caps.min_ttl:g} s: using it instead of {ttl:g} s)")
            ttl = caps.min_ttl
        bound = registry.detection_bound(ttl)
        say(f"discovery demo on {caps.name}  (declared detection bound for ttl={ttl:g}s: {bound:.2f} s)")
        seen: list[Snapshot] = []
        _watch_printer(registry, "web", namespace, seen)
        _wait_until(seen, lambda s: True, 30)

        doomed = Registry.connect(url)
        web = [
            Instance("web", f"web-{n}", "127.0.0.1", 8080 + n, namespace=namespace,
                     labels={"app": "web", "tier": "frontend"}, zone=f"zone-{'ab'[n % 2]}")
            for n in range(1, 4)
        ]
        api = [
            Instance("api", f"api-{n}", "127.0.0.1", 9090 + n, namespace=namespace,
                     labels={"app": "api", "tier": "backend"}, ports={"metrics": 9190 + n})
            for n in range(1, 3)
        ]
        registrations = [registry.register(i, ttl=ttl) for i in web[:2] + api]
        doomed.register(web[2], ttl=ttl)
        _wait_until(seen, lambda s: len(s) == 3, 30)

        say(f"\nservices in namespace {namespace!r}: {', '.join(registry.services(namespace))}")
        backend_tier = registry.instances("api", namespace, selector="tier=backend")
        table = render_table(INSTANCE_HEADERS, instance_rows(backend_tier))
        say(f"\ninstances('api', selector='tier=backend'):\n{table}")

        balancer = RoundRobin()
        picks = [balancer.pick(registry.instances("web", namespace)).id for _ in range(6)]
        say(f"\nround-robin picks over web (answered from the watch cache): {' '.join(picks)}")

        say(f"\n>>> web-3's process dies without deregistering (its keep-alive stops); bound {bound:.2f} s")
        doomed.close(deregister=False)
        elapsed = _wait_until(seen, lambda s: "web-3" not in s.ids(), bound + 30)
        say(f">>> web-3 left the watcher's snapshot after {elapsed:.2f} s")

        say("\n>>> web-2 is set to DRAINING: it stays registered but leaves new picks")
        registrations[1].update(status=Status.DRAINING)
        _wait_until(seen, lambda s: (i := s.get("web-2")) is not None and i.status is Status.DRAINING, 30)
        picks = [balancer.pick(registry.instances("web", namespace)).id for _ in range(4)]
        say(f"round-robin picks over UP web instances: {' '.join(picks)}")

        for registration in registrations:
            registration.deregister()
        _wait_until(seen, lambda s: len(s) == 0, 30)
        say("\nderegistered everything; demo done.")
    return 0


@click.command()
@click.option("--ttl", type=float, default=2.0, show_default=True, help="TTL of the demo registrations (seconds)")
@click.pass_obj
def demo(options: GlobalOptions, ttl: float) -> None:
    """Register, watch, kill, drain and pick, printed as tables."""
    run_demo(options.url, ttl)


#: Added to the ``discovery`` group by :mod:`discovery.cli.app`.
COMMANDS: list[click.Command] = [demo]
