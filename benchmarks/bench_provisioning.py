"""Provisioning new learners (sensor ticks, cloning runs, registry rows, files) against the same work without Dagster.

For each size, in one process: a fresh SQLite registry with N learners who completed their
baseline (one bulk insert, as the app's sign-ups would over time) and a fresh Dagster instance.

- **plain**: `clone_learners` (what the cloning asset calls) over all N, no Dagster at all:
  copy-on-write clone manifests, one flush and one registry transaction per batch.
- **dagster**: what the daemon does: tick `new_learner_sensor`, apply its partition requests,
  execute every requested `clone_learners` run in-process on the instance; repeat until a tick
  finds nobody left.

Reported: seconds for each, learners per second, Dagster's overhead per learner and the ratio of
the two, plus the instance's event count (the event log is Dagster's per-run cost).

    python -m benchmarks.bench_provisioning                 # 10,000 and 100,000
    python -m benchmarks.bench_provisioning --quick         # 1,000
    python -m benchmarks.bench_provisioning --sizes 10000 --dagster-up-to 0   # plain only
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import dagster as dg

from benchmarks.bench_sensor import add_learners, trained_deployment

RESULTS_PATH = Path(__file__).resolve().parent / "results" / "provisioning.json"
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
GOAL_SECONDS_100K = 300  # the goal: 100,000 learners in under 5 minutes on 2 cores
# With one partition per learner Dagster writes ~2 events per learner (~30-120 ms each on a busy
# machine): past this size the Dagster path is projected from the largest measured one, not run.
DAGSTER_UP_TO = 10_000


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
            for request in requests:
                result = job.execute_in_process(
                    instance=instance, tags=request.tags, raise_on_error=False, run_config=QUIET
                )
                if not result.success:
                    raise RuntimeError(f"cloning run failed for {request.tags}")
                runs += 1
            if not requests and not registry.learners_needing_model(limit=1):
                break
        seconds = time.perf_counter() - started
        registered = registry.get_statistics()["totalLearnerModels"]
        events = sum(len(instance.all_logs(r.run_id)) for r in instance.get_runs())
        registry.engine.dispose()
    if registered != count:
        raise RuntimeError(f"dagster provisioning: {registered} of {count} registered")
    return {
        "seconds": seconds,
        "registered": registered,
        "ticks": ticks,
        "runs": runs,
        "tick_seconds": tick_seconds,
        "events": events,
    }


def measure(count: int, with_dagster: bool) -> dict[str, Any]:
    plain = _plain(count)
    row: dict[str, Any] = {
        "learners": count,
        "plain_seconds": plain["seconds"],
        "plain_learners_per_s": count / plain["seconds"],
    }
    if not with_dagster:
        return row
    dagster = _dagster(count)
    row.update(
        {
            "dagster_seconds": dagster["seconds"],
            "dagster_learners_per_s": count / dagster["seconds"],
            "dagster_overhead_ms_per_learner": 1000 * (dagster["seconds"] - plain["seconds"]) / count,
            "ratio_dagster_to_plain": dagster["seconds"] / plain["seconds"],
            "ticks": dagster["ticks"],
            "runs": dagster["runs"],
            "tick_seconds": dagster["tick_seconds"],
            "events": dagster["events"],
            "events_per_learner": dagster["events"] / count,
        }
    )
    return row


def run(quick: bool = False, sizes: list[int] | None = None, dagster_up_to: int = DAGSTER_UP_TO) -> dict[str, Any]:
    sizes = sizes or ([1_000] if quick else [10_000, 100_000])
    rows = []
    for count in sizes:
        rows.append(measure(count, with_dagster=count <= dagster_up_to))
        print(json.dumps(rows[-1]), flush=True)
    measured = [r for r in rows if "dagster_seconds" in r]
    for row in rows:
        if "dagster_seconds" not in row and measured:
            # Not run: the per-learner cost of the largest measured size, scaled (labelled as such).
            largest = max(measured, key=lambda r: r["learners"])
            row["dagster_seconds_projected"] = row["learners"] * largest["dagster_seconds"] / largest["learners"]
    result = {"benchmark": "provisioning", "quick": quick, "goal_seconds_100k": GOAL_SECONDS_100K, "rows": rows}
    _print_table(result)
    return result


def _print_table(result: dict[str, Any]) -> None:
    print("\nProvisioning new learners (sensor ticks + cloning runs + rows + files), SQLite registry")
    header = (
        f"{'learners':>9} {'plain s':>8} {'plain/s':>8} {'Dagster s':>10} {'ratio':>7} {'overhead ms':>11} "
        f"{'ticks':>5} {'runs':>5} {'events/learner':>14}"
    )
    print(header)
    print("-" * len(header))
    for r in result["rows"]:
        if "dagster_seconds" in r:
            dagster = (
                f"{r['dagster_seconds']:>10.1f} {r['ratio_dagster_to_plain']:>6.1f}x "
                f"{r['dagster_overhead_ms_per_learner']:>11.2f} {r['ticks']:>5} {r['runs']:>5} "
                f"{r['events_per_learner']:>14.2f}"
            )
        else:
            projected = r.get("dagster_seconds_projected")
            shown = f"~{projected:.0f} (projected)" if projected else "not run"
            dagster = f"{shown:>10}"
        print(f"{r['learners']:>9,} {r['plain_seconds']:>8.1f} {r['plain_learners_per_s']:>8.0f} {dagster}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", type=int, nargs="+", help="learner counts (default 10,000 and 100,000)")
    parser.add_argument("--dagster-up-to", type=int, default=DAGSTER_UP_TO, help="largest size run through Dagster")
    args = parser.parse_args(argv)
    result = run(quick=args.quick, sizes=args.sizes, dagster_up_to=args.dagster_up_to)
    RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_PATH.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {RESULTS_PATH}")


if __name__ == "__main__":
    main()
