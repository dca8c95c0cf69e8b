"""The ``discovery`` command: ``demo``, ``services``, ``list``, ``watch`` and ``register``."""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Sequence

from discovery.balancing import RoundRobin
from discovery.errors import DiscoveryError
from discovery.models import Instance, Snapshot, Status
from discovery.sync import Registry
from discovery.tables import INSTANCE_HEADERS, instance_rows, render_snapshot, render_table

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


def _print_list(registry: Registry, args: argparse.Namespace) -> int:
    statuses = None if args.all else (Status.UP,)
    found = registry.instances(args.service, args.namespace, selector=args.selector, statuses=statuses)
    print(render_table(INSTANCE_HEADERS, instance_rows(found)))
    return 0


def _watch(registry: Registry, args: argparse.Namespace) -> int:
    with registry.watch(args.service, args.namespace) as watch:
        for snapshot in watch:
            print(render_snapshot(snapshot), flush=True)
    return 0


def _register(registry: Registry, args: argparse.Namespace) -> int:
    labels = dict(item.split("=", 1) for item in args.label)
    instance = Instance(args.service, args.id, args.address, args.port, namespace=args.namespace, labels=labels)
    registration = registry.register(instance, ttl=args.ttl)
    print(f"registered {registration!r}; Ctrl-C deregisters", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        registration.deregister()
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``discovery`` command."""
    parser = argparse.ArgumentParser(prog="discovery", description="Service discovery over ZooKeeper, etcd, Consul.")
    parser.add_argument("--url", default=None, help="backend URL (default: $DISCOVERY_URL or memory://)")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="register, watch, kill, drain and pick, printed as tables")
    demo.add_argument("--ttl", type=float, default=2.0, help="TTL of the demo registrations (seconds)")

    services = commands.add_parser("services", help="list service names")
    services.add_argument("-n", "--namespace", default="default")

    for name, helptext in (("list", "list instances"), ("watch", "print every snapshot of a service")):
        sub = commands.add_parser(name, help=helptext)
        sub.add_argument("service")
        sub.add_argument("-n", "--namespace", default="default")
        if name == "list":
            sub.add_argument("-l", "--selector", default=None, help="label selector, e.g. 'app=web,tier!=db'")
            sub.add_argument("--all", action="store_true", help="every status, not only UP")

    register = commands.add_parser("register", help="register an instance until Ctrl-C")
    register.add_argument("service")
    register.add_argument("id")
    register.add_argument("address")
    register.add_argument("port", type=int)
    register.add_argument("-n", "--namespace", default="default")
    register.add_argument("--label", action="append", default=[], help="key=value (repeatable)")
    register.add_argument("--ttl", type=float, default=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``discovery`` command."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            return run_demo(args.url, args.ttl)
        with Registry.connect(args.url) as registry:
            if args.command == "services":
                print("\n".join(registry.services(args.namespace)))
                return 0
            handler = {"list": _print_list, "watch": _watch, "register": _register}[args.command]
            return handler(registry, args)
    except DiscoveryError as error:
        print(f"discovery: {type(error).__name__}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
