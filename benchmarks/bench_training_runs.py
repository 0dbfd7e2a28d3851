"""Local training of N learners through bucket runs against the same `train_learner_locally` loop without Dagster.

For each path, in one process: a fresh SQLite registry with N learners who completed their
baseline and have their first interactions (`simulate_new_learners`), already cloned (not timed).

- **plain**: `train_learner_locally` per learner, as the training asset calls it, no Dagster.
- **dagster**: what the daemon does: tick `learner_activity_sensor`, execute every requested
  `train_learners` run (each over a range of learner buckets) in-process; repeat until a tick
  finds nobody ready.

Both record one `"ModelTrainingSession"` per learner; the ratio is the cost of the orchestration.

    python -m benchmarks.bench_training_runs            # 1,000 learners
    python -m benchmarks.bench_training_runs --quick    # 100
    python -m benchmarks.bench_training_runs --sizes 10000
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import dagster as dg

from benchmarks.bench_sensor import execute_requests, trained_deployment

RESULTS_PATH = Path(__file__).resolve().parent / "results" / "training_runs.json"


def _deployment(root: Path, count: int) -> tuple[Any, Any, Any, Any]:
    from aivo_fl.operations.app_simulation import simulate_new_learners
    from aivo_fl.operations.learners import clone_learners
    from aivo_fl.operations.store import ModelStore

    settings, registry, defs = trained_deployment(root)
    store = ModelStore.from_settings(settings)
    clone_learners(registry, store, simulate_new_learners(registry, count))
    return settings, registry, store, defs


def _plain(count: int) -> float:
    from aivo_fl.operations.learners import train_learner_locally

    with tempfile.TemporaryDirectory() as tmp:
        settings, registry, store, _ = _deployment(Path(tmp), count)
        learners = [learner for learner, _, _ in registry.learners_with_new_interactions(20)]
        started = time.perf_counter()
        for learner in learners:
            train_learner_locally(
                registry,
                store,
                learner,
                epochs=settings.local_epochs,
                proximal_mu=settings.local_proximal_mu,
                num_threads=1,
            )
        seconds = time.perf_counter() - started
        sessions = registry.get_statistics()["totalTrainingSessions"]
        registry.engine.dispose()
    if sessions != count:
        raise RuntimeError(f"plain training: {sessions} sessions for {count} learners")
    return seconds


def _dagster(count: int) -> dict[str, Any]:
    from aivo_fl.defs.ticks import tick_sensor

    with tempfile.TemporaryDirectory() as tmp, dg.instance_for_test() as instance:
        _, registry, _, defs = _deployment(Path(tmp), count)
        job = defs.resolve_job_def("train_learners")
        runs = 0
        started = time.perf_counter()
        while requests := list(tick_sensor(defs, instance, "learner_activity_sensor").run_requests or []):
            runs += execute_requests(job, instance, requests)
        seconds = time.perf_counter() - started
        sessions = registry.get_statistics()["totalTrainingSessions"]
        events = sum(len(instance.all_logs(r.run_id)) for r in instance.get_runs())
        registry.engine.dispose()
    if sessions != count:
        raise RuntimeError(f"dagster training: {sessions} sessions for {count} learners")
    return {"seconds": seconds, "runs": runs, "events": events}


def measure(count: int) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    plain = _plain(count)
    dagster = _dagster(count)
    return {
        "learners": count,
        "plain_seconds": plain,
        "plain_learners_per_s": count / plain,
        "dagster_seconds": dagster["seconds"],
        "dagster_learners_per_s": count / dagster["seconds"],
        "dagster_overhead_ms_per_learner": 1000 * (dagster["seconds"] - plain) / count,
        "ratio_dagster_to_plain": dagster["seconds"] / plain,
        "runs": dagster["runs"],
        "events": dagster["events"],
        "load_average_1m": [load_before, os.getloadavg()[0]],
    }


def run(quick: bool = False, sizes: list[int] | None = None) -> dict[str, Any]:
    rows = []
    for count in sizes or ([100] if quick else [1_000]):
        rows.append(measure(count))
        print(json.dumps(rows[-1]), flush=True)
    result = {"benchmark": "training_runs", "quick": quick, "cpus": os.cpu_count(), "rows": rows}
    print("\nLocal training (activity sensor ticks + training runs + sessions + delta files), SQLite")
    header = f"{'learners':>9} {'plain s':>8} {'Dagster s':>10} {'ratio':>7} {'overhead ms/learner':>19} {'runs':>5}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['learners']:>9,} {r['plain_seconds']:>8.1f} {r['dagster_seconds']:>10.1f} "
            f"{r['ratio_dagster_to_plain']:>6.2f}x {r['dagster_overhead_ms_per_learner']:>19.2f} {r['runs']:>5}"
        )
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", type=int, nargs="+", help="learner counts (default 1,000)")
    args = parser.parse_args(argv)
    result = run(quick=args.quick, sizes=args.sizes)
    RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_PATH.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {RESULTS_PATH}")


if __name__ == "__main__":
    main()
