"""Scenario 6: scale — N instances over N/10 services, N/10 subscribers in one process, for each N of the
profile. Measured in a fresh process (:mod:`benchmarks.scale_probe`); on real backends the instances are held
by a second process, so the measured process only watches. On Consul every instance is an agent service with its
own TTL heartbeat; the holder registers with a 600 s TTL (one heartbeat per instance every ~200 s) so that the
agent is not busy with ~1 000 check updates/s at N = 10 000 — a measurement of the agent, not of this library.
Above N = 1 000 the Consul holder writes catalog entries instead (``scale_probe register --catalog``): an agent
holding 10 000 services spent ten minutes of the run registering them, 50 000 would take hours. The measured
process reads the same health entries either way. On Consul the full profile adds one more shape: one
instance in each of 10 000 services, all watched by one process, with the connections it holds to the agent.
"""

from __future__ import annotations

import json
import sys

from benchmarks.context import RunContext
from benchmarks.procs import Worker, WorkerError
from benchmarks.report import Report, Row
from benchmarks.stats import summarize

SCENARIO = "6-scale"

#: The holder's registration TTL per backend (default 30 s); see the module docstring.
HOLDER_TTL = {"consul": 600.0}
#: Extra URL parameters for the holder: a Consul agent's registration slows as it holds more services (its
#: anti-entropy sync compares all local services per change), so calls get more than the default 5 s.
HOLDER_PARAMETERS = {"consul": "&timeout=120"}
#: Above this N the Consul holder writes catalog entries, not agent services: 1 000 agent registrations took 3 s
#: with < 1 000 held but 69 s with 5 000-7 000 held (agent log, 1.8.7 dev agent).
AGENT_HOLDER_MAX = {"consul": 1_000}
#: Consul's wide shape (full profile): this many services, one instance each, all watched by one process.
WIDE_SERVICES = 10_000


def _catalog_holder(backend: str, size: int, services: int) -> bool:
    """Whether the holder writes catalog entries: more instances than an agent registers in reasonable time, or
    the wide shape (one service per instance)."""
    limit = AGENT_HOLDER_MAX.get(backend)
    return limit is not None and (size > limit or services == size)


def _probe(
    context: RunContext, backend: str, size: int, services: int | None = None
) -> tuple[dict[str, object], dict[str, object] | None]:
    """Our probe's result, and the raw client's listing of the same keys (``None`` on memory)."""
    services = services or max(1, size // 10)
    target = context.target(backend, "scale", ttl=30.0)
    url = target.ours_url
    holder = None
    if backend != "memory":
        holder_url = url + HOLDER_PARAMETERS.get(backend, "")
        argv = [sys.executable, "-m", "benchmarks.scale_probe", "register", holder_url, str(size), str(services),
                f"--ttl={HOLDER_TTL.get(backend, 30.0):g}"]
        if _catalog_holder(backend, size, services):
            argv.append("--catalog")
        holder = Worker(argv, label=f"scale registrant ({backend})")
        holder.expect("READY", 900)
    try:
        argv = [sys.executable, "-m", "benchmarks.scale_probe", "watch", url, str(size), str(services), str(services),
                str(context.profile.scale_fanout_changes), f"--idle={3.0 if context.profile.anchors else 0.5}"]
        if backend == "memory":
            argv.append("--local")
        else:
            argv.append(f"--connections={target.port}")
        probe = Worker(argv, label=f"scale probe ({backend}, {size})")
        try:
            fields = probe.expect("RESULT", 1800)
        finally:
            probe.close()
        raw = None
        if holder is not None:
            lister = Worker([sys.executable, "-m", "benchmarks.scale_probe", "rawlist", backend, target.host,
                             str(target.port), target.scope, str(services)], label=f"raw listing ({backend}, {size})")
            try:
                raw = dict(json.loads(" ".join(lister.expect("RESULT", 1800)[1:])))
            finally:
                lister.close()
        return dict(json.loads(" ".join(fields[1:]))), raw
    finally:
        if holder is not None:
            holder.close(120)


def run(context: RunContext, report: Report, backend: str) -> None:
    """Every size of the profile on this backend (memory and the profile's real backends)."""
    if backend not in ("memory", *context.profile.scale_real_backends):
        report.add(Row(SCENARIO, backend, "ours", "", status="skipped",
                       note="not run on this backend in this profile"))
        return
    shapes = [(size, size // 10) for size in context.profile.scale_sizes]
    if backend == "consul" and context.profile.anchors:
        shapes.append((WIDE_SERVICES, WIDE_SERVICES))
    for size, services in shapes:
        try:
            result, raw = _probe(context, backend, size, services)
        except (WorkerError, OSError, ValueError) as error:
            report.add(Row(SCENARIO, backend, "ours", "ms", status="failed",
                           note=f"N={size}: {str(error).splitlines()[0][:200]}"))
            continue
        _add_rows(report, backend, size, max(1, services), result, raw)


def _add_rows(
    report: Report, backend: str, size: int, services: int, result: dict[str, object], raw: dict[str, object] | None
) -> None:
    wide = services == size
    label = f"ours {services} services" if wide else f"ours N={size}"
    delays = summarize(result["fanout_delays_s"], 1e3)  # type: ignore[arg-type]
    values = {
        "instances": float(size),
        "n": delays["n"],
        "p50": delays["p50"],
        "p99": delays["p99"],
        "rss_mb": float(result["rss_mb"]),  # type: ignore[arg-type]
        "sync_s": float(result["sync_s"]),  # type: ignore[arg-type]
        "sync_cpu_s": float(result["sync_cpu_s"]),  # type: ignore[arg-type]
        "idle_cpu_pct": float(result["idle_cpu_pct"]),  # type: ignore[arg-type]
    }
    if "connections_max" in result:
        values["connections_max"] = float(result["connections_max"])  # type: ignore[arg-type]
        values["connections_idle"] = float(result["connections_idle"])  # type: ignore[arg-type]
    note = f"{services} services, {services} subscribers + all on one hot service; p50/p99 = fan-out"
    if _catalog_holder(backend, size, services):
        note += "; instances held as catalog entries (see benchmarks/scale.py)"
    report.add(Row(SCENARIO, backend, label, "ms", values, note=note))
    if raw is not None:
        listed = {"instances": float(size), "sync_s": float(raw["list_s"]),  # type: ignore[arg-type]
                  "sync_cpu_s": float(raw["list_cpu_s"]), "found": float(raw["found"])}  # type: ignore[arg-type]
        report.add(Row(SCENARIO, backend, f"raw listing {services} services" if wide else f"raw listing N={size}",
                       "s", listed,
                       note="the raw client's own listing of the same keys: the initial sync's anchor"))
