"""Fault-injection conformance, full profile: every fault >= 20 times on every backend, then the table.

    .venv/bin/python -m benchmarks.faults                       # full profile, process servers
    .venv/bin/python -m benchmarks.faults --profile quick --backends etcd --faults partition,churn

Runs the trials of ``tests/faults`` (the pytest suite runs the quick profile) one after the other against
private servers and three-node clusters on 127.0.0.2-4, and prints a Markdown table: fault x backend ->
trials, lost, stale, converged %, violations, restore time p50/max and convergence time p50/max. Every
failed trial is printed with what was wrong. ``--json`` appends every trial's result as it finishes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

from benchmarks.stats import percentile
from tests.faults.scenarios import FAULTS, PROFILES, FaultServers, run_fault
from tests.faults.targets import BACKENDS, Target
from tests.faults.trial import TrialResult

HEADER = ("| fault | backend | trials | lost | stale | converged | violations | own writes read back "
          "| read-your-writes violations | monotonic violations | restore p50 / max (s) | convergence p50 / max (s) |")


def _times(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{percentile(values, 50):.2f} / {max(values):.2f}"


def table(results: Sequence[TrialResult]) -> str:
    """The Markdown table of ``results``, one row per fault and backend."""
    rows = [HEADER, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for fault in FAULTS:
        for backend in BACKENDS:
            mine = [r for r in results if r.fault == fault and r.backend == backend]
            if not mine:
                continue
            watchers = sum(r.watchers for r in mine)
            converged = 100.0 * sum(r.converged for r in mine) / watchers if watchers else 100.0
            restore = [r.restore_s for r in mine if r.restore_s is not None]
            convergence = [r.convergence_s for r in mine if r.convergence_s is not None]
            violations = sum(len(r.violations) + r.duplicates for r in mine)
            rows.append(
                f"| {fault} | {backend} | {len(mine)} | {sum(r.lost for r in mine)} | {sum(r.stale for r in mine)} "
                f"| {converged:.1f} % | {violations} | {sum(r.own_writes for r in mine)} "
                f"| {sum(r.read_your_writes for r in mine)} | {sum(r.monotonic for r in mine)} "
                f"| {_times(restore)} | {_times(convergence)} |"
            )
    return "\n".join(rows)


async def run(backends: Sequence[str], faults: Sequence[str], trials: int, profile_name: str,
              provider: str, json_lines: Path | None = None) -> list[TrialResult]:
    """Run ``trials`` trials of each fault on each backend; print (and append to ``json_lines``) each trial."""
    profile = replace(PROFILES[profile_name], trials=trials)
    servers = FaultServers(provider)
    results: list[TrialResult] = []
    try:
        for backend in backends:
            for fault in faults:
                for number in range(profile.trials):
                    started = time.monotonic()
                    try:
                        result = await run_fault(fault, Target(backend), servers, profile)
                    except Exception as error:  # a trial that could not even run counts as a violation
                        result = TrialResult(fault, backend, violations=[f"trial failed: {error!r}"])
                    results.append(result)
                    if json_lines is not None:
                        with json_lines.open("a", encoding="utf-8") as sink:
                            sink.write(json.dumps(asdict(result)) + "\n")
                    mark = "ok " if result.ok else "BAD"
                    print(f"{mark} [{time.monotonic() - started:5.1f}s] #{number + 1} {result.describe()}",
                          file=sys.stderr, flush=True)
    finally:
        await asyncio.to_thread(servers.close)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run, print the table; exit 1 if any invariant was broken."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.faults", description=__doc__.split("\n")[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="full")
    parser.add_argument("--trials", type=int, default=None, help="trials per fault and backend (default: profile)")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--faults", default=",".join(FAULTS))
    parser.add_argument("--servers", choices=("process", "container"), default="process")
    parser.add_argument("--json", type=Path, default=None, help="also append every trial's result here (JSON lines)")
    parser.add_argument("--table-from", type=Path, nargs="+", default=None, metavar="JSONL",
                        help="run nothing: print the table of the trials recorded in these --json files")
    args = parser.parse_args(argv)
    if args.table_from:
        recorded = [TrialResult(**json.loads(line)) for path in args.table_from
                    for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        print(table(recorded))
        return 1 if any(not r.ok for r in recorded) else 0
    backends = [b for b in args.backends.split(",") if b]
    faults = [f for f in args.faults.split(",") if f]
    unknown = sorted(set(backends) - set(BACKENDS)) + sorted(set(faults) - set(FAULTS))
    if unknown:
        parser.error(f"unknown backend/fault: {', '.join(unknown)}")
    trials = args.trials if args.trials is not None else PROFILES[args.profile].trials
    started = time.monotonic()
    results = asyncio.run(run(backends, faults, trials, args.profile, args.servers, args.json))
    print(f"\nprofile {args.profile}, {trials} trial(s) each, servers: {args.servers}, "
          f"{time.monotonic() - started:.0f} s\n")
    print(table(results))
    failed = [r for r in results if not r.ok]
    for result in failed:
        print(f"\nFAILED {result.describe()}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
