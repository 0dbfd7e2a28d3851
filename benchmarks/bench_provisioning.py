"""Provisioning new learners (sensor ticks, cloning runs, registry rows, files) against the same work without Dagster.

For each size, in one process: a fresh SQLite registry with N learners who completed their
baseline (one bulk insert, as the app's sign-ups would over time) and a fresh Dagster instance.

- **plain**: `clone_learners` (what the cloning asset calls) over all N, no Dagster at all:
  copy-on-write clone manifests, one flush and one registry transaction per batch.
- **dagster**: what the daemon does: tick `new_learner_sensor`, execute every requested
  `clone_learners` run (each over a range of learner buckets) in-process on the instance; repeat
  until a tick finds nobody left.

Reported: seconds for each, learners per second, Dagster's overhead per learner and the ratio of
the two, the runs, buckets and events (the event log is Dagster's cost: two events per bucket a
run covers, ~11 per run), milliseconds per event, and the load average (the machine is shared).

    python -m benchmarks.bench_provisioning                          # 200, 10,000 and 100,000
    python -m benchmarks.bench_provisioning --quick                  # 1,000
    python -m benchmarks.bench_provisioning --sizes 10000 --buckets-per-run 1024 256
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import dagster as dg

from aivo_fl.defs import sensors
from benchmarks.bench_sensor import add_learners, execute_requests, trained_deployment
from benchmarks.report import Column, run_and_report
from benchmarks.report import table as report_table

GOAL_SECONDS_100K = 300  # the goal: 100,000 learners in under 5 minutes on 2 cores


def _deployment(root: Path, count: int) -> tuple[Any, Any, Any, Any]:
    from aivo_fl.operations.store import ModelStore

    settings, registry, defs = trained_deployment(root)
    add_learners(registry, count)
    return settings, registry, ModelStore.from_settings(settings), defs


def _plain(count: int) -> dict[str, Any]:
    from aivo_fl.operations.learners import clone_learners

    with tempfile.TemporaryDirectory() as tmp:
        _, registry, store, _ = _deployment(Path(tmp), count)
        started = time.perf_counter()
        pending = registry.learners_needing_model(limit=count)
        batch = clone_learners(registry, store, pending)
        seconds = time.perf_counter() - started
        registered = registry.get_statistics()["totalLearnerModels"]
        registry.engine.dispose()
    if batch.failures or registered != count:
        raise RuntimeError(f"plain provisioning: {registered} registered, failures {list(batch.failures.items())[:3]}")
    return {"seconds": seconds, "registered": registered}


def _dagster(count: int) -> dict[str, Any]:
    from aivo_fl.defs.sensors import run_buckets
    from aivo_fl.defs.ticks import tick_sensor

    with tempfile.TemporaryDirectory() as tmp, dg.instance_for_test() as instance:
        _, registry, _, defs = _deployment(Path(tmp), count)
        job = defs.resolve_job_def("clone_learners")
        ticks = runs = 0
        tick_seconds = 0.0
        cursor: str | None = None
        started = time.perf_counter()
        while True:
            tick_started = time.perf_counter()
            data = tick_sensor(defs, instance, "new_learner_sensor", cursor)
            requests, cursor = list(data.run_requests or []), data.cursor or cursor
            tick_seconds += time.perf_counter() - tick_started
            ticks += 1
            runs += execute_requests(job, instance, requests)
            if not requests and not registry.learners_needing_model(limit=1):
                break
        seconds = time.perf_counter() - started
        registered = registry.get_statistics()["totalLearnerModels"]
        events = sum(len(instance.all_logs(r.run_id)) for r in instance.get_runs())
        buckets = sum(len(run_buckets(r)) for r in instance.get_runs())
        registry.engine.dispose()
    if registered != count:
        raise RuntimeError(f"dagster provisioning: {registered} of {count} registered")
    return {
        "seconds": seconds,
        "registered": registered,
        "ticks": ticks,
        "runs": runs,
        "buckets_covered": buckets,
        "tick_seconds": tick_seconds,
        "events": events,
    }


def measure(count: int) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    plain = _plain(count)
    dagster = _dagster(count)
    overhead = dagster["seconds"] - plain["seconds"]
    return {
        "learners": count,
        "buckets_per_run": sensors.BUCKETS_PER_RUN,
        "plain_seconds": plain["seconds"],
        "plain_learners_per_s": count / plain["seconds"],
        "dagster_seconds": dagster["seconds"],
        "dagster_learners_per_s": count / dagster["seconds"],
        "dagster_overhead_ms_per_learner": 1000 * overhead / count,
        "ratio_dagster_to_plain": dagster["seconds"] / plain["seconds"],
        "ticks": dagster["ticks"],
        "runs": dagster["runs"],
        "buckets_covered": dagster["buckets_covered"],
        "tick_seconds": dagster["tick_seconds"],
        "events": dagster["events"],
        "events_per_learner": dagster["events"] / count,
        "overhead_ms_per_event": 1000 * overhead / dagster["events"],
        "load_average_1m": [load_before, os.getloadavg()[0]],
    }


def run(
    quick: bool = False, sizes: list[int] | None = None, buckets_per_run: list[int] | None = None
) -> dict[str, Any]:
    sizes = sizes or ([1_000] if quick else [200, 10_000, 100_000])
    rows = []
    default = sensors.BUCKETS_PER_RUN
    try:
        for count in sizes:
            for per_run in buckets_per_run or [default]:
                sensors.BUCKETS_PER_RUN = per_run
                rows.append(measure(count))
                print(json.dumps(rows[-1]), flush=True)
    finally:
        sensors.BUCKETS_PER_RUN = default
    return {"goal_seconds_100k": GOAL_SECONDS_100K, "cpus": os.cpu_count(), "rows": rows}


COLUMNS = (
    Column("learners", "learners", "{:,}"),
    Column("plain_seconds", "plain s", "{:.1f}"),
    Column("dagster_seconds", "Dagster s", "{:.1f}"),
    Column("ratio_dagster_to_plain", "Dagster/plain", "{:.2f}x"),
    Column("dagster_overhead_ms_per_learner", "overhead ms/learner", "{:.2f}"),
    Column("runs", "runs"),
    Column("buckets_covered", "buckets"),
    Column("events", "events", "{:,}"),
    Column("overhead_ms_per_event", "ms/event", "{:.1f}"),
    Column("load_average_1m", "load", "{0[0]:.1f}-{0[1]:.1f}"),
)


def table(result: dict[str, Any]) -> str:
    title = "Provisioning new learners (sensor ticks + cloning runs + rows + files), SQLite registry and instance"
    return report_table(result["rows"], COLUMNS, title)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", type=int, nargs="+", help="learner counts (default 200, 10,000 and 100,000)")
    parser.add_argument("--buckets-per-run", type=int, nargs="+", help="compare run sizes (default: the sensor's)")
    args = parser.parse_args(argv)
    run_one = partial(run, sizes=args.sizes, buckets_per_run=args.buckets_per_run)
    run_and_report("provisioning", run_one, table, args.quick)


if __name__ == "__main__":
    main()
