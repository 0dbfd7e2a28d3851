"""Local training of N learners through bucket runs against the same work without Dagster.

For each path, in one process: a fresh SQLite registry with N learners who completed their
baseline and have INTERACTIONS interactions each (a first week or two: ready to train), already
cloned (not timed). The interactions are those of TEMPLATES simulated learners
(`generate_learner`) reused in turn and bulk-inserted: what training costs does not depend on
their values, and simulating 100,000 learners one by one would take longer than training them.

- **plain**: `train_learners_locally` over all N, as the training asset calls it, no Dagster.
- **dagster**: what the daemon does: tick `learner_activity_sensor`, execute every requested
  `train_learners` run (each over a range of learner buckets) in-process; repeat until a tick
  finds nobody ready.
- **one at a time**: `train_learner_locally` per learner (a batch of one: its own flush and
  registry commit), on the first LOOP_SAMPLE learners; what batching buys.

All record one `"ModelTrainingSession"` per learner; dagster / plain is the cost of the
orchestration, one-at-a-time / plain (per learner) that of training learners one by one.

    python -m benchmarks.bench_training_runs            # 10,000 and 100,000 learners (~1 hour here)
    python -m benchmarks.bench_training_runs --quick    # 100
    python -m benchmarks.bench_training_runs --sizes 1000
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import sqlalchemy as sa

from benchmarks.bench_sensor import add_learners, execute_requests, trained_deployment
from benchmarks.report import Column, run_and_report
from benchmarks.report import table as report_table

LOOP_SAMPLE = 500
INTERACTIONS = 30
TEMPLATES = 1_000


@lru_cache(maxsize=1)
def _template_rows() -> list[list[dict[str, Any]]]:
    """Per template learner, its interaction rows (packed float32 features, one column per head)."""
    from aivo_fl.ml.samples import HEAD_CLASSES
    from aivo_fl.ml.simulation.world import generate_learner

    rows = []
    for i in range(TEMPLATES):
        data = generate_learner(f"template-{i}", 0, INTERACTIONS)
        parts = [data.train, data.heldout]
        features = np.concatenate([p.features for p in parts]).astype("<f4")
        targets = {h: np.concatenate([p.targets[h] for p in parts]) for h in HEAD_CLASSES}
        rows.append(
            [{"features": f.tobytes()} | {h: int(targets[h][j]) for h in HEAD_CLASSES} for j, f in enumerate(features)]
        )
    return rows


def _add_interactions(registry: Any, count: int) -> None:
    from aivo_fl.registry.schema import LearnerInteraction, utcnow

    now, templates = utcnow(), _template_rows()
    for first in range(0, count, 1_000):
        with registry.engine.begin() as conn:
            rows = [
                {"learnerId": f"learner-{i:06d}", "createdAt": now} | row
                for i in range(first, min(first + 1_000, count))
                for row in templates[i % TEMPLATES]
            ]
            conn.execute(sa.insert(LearnerInteraction), rows)


def _deployment(root: Path, count: int) -> tuple[Any, Any, Any, Any]:
    from aivo_fl.operations.learners import clone_learners
    from aivo_fl.operations.store import ModelStore

    settings, registry, defs = trained_deployment(root)
    store = ModelStore.from_settings(settings)
    add_learners(registry, count)
    _add_interactions(registry, count)
    clone_learners(registry, store, [f"learner-{i:06d}" for i in range(count)])
    return settings, registry, store, defs


def _plain(count: int, one_at_a_time: bool = False) -> tuple[float, float]:
    from aivo_fl.operations.learners import train_learner_locally, train_learners_locally

    with tempfile.TemporaryDirectory() as tmp:
        settings, registry, store, _ = _deployment(Path(tmp), count)
        learners = [learner for learner, _, _ in registry.learners_with_new_interactions(20)]
        options = {"epochs": settings.local_epochs, "proximal_mu": settings.local_proximal_mu, "num_threads": 1}
        started, cpu = time.perf_counter(), time.process_time()
        if one_at_a_time:
            for learner in learners:
                train_learner_locally(registry, store, learner, **options)
        else:
            failures = train_learners_locally(registry, store, learners, **options).failures
            if failures:
                raise RuntimeError(f"plain training: {len(failures)} failures, e.g. {next(iter(failures.items()))}")
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        sessions = registry.get_statistics()["totalTrainingSessions"]
        registry.engine.dispose()
    if sessions != count:
        raise RuntimeError(f"plain training: {sessions} sessions for {count} learners")
    return seconds, cpu


def _dagster(count: int) -> dict[str, Any]:
    from aivo_fl.defs.ticks import tick_sensor

    with tempfile.TemporaryDirectory() as tmp, dg.instance_for_test() as instance:
        _, registry, _, defs = _deployment(Path(tmp), count)
        job = defs.resolve_job_def("train_learners")
        runs = 0
        started, cpu = time.perf_counter(), time.process_time()
        while requests := list(tick_sensor(defs, instance, "learner_activity_sensor").run_requests or []):
            runs += execute_requests(job, instance, requests)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        sessions = registry.get_statistics()["totalTrainingSessions"]
        events = sum(len(instance.all_logs(r.run_id)) for r in instance.get_runs())
        registry.engine.dispose()
    if sessions != count:
        raise RuntimeError(f"dagster training: {sessions} sessions for {count} learners")
    return {"seconds": seconds, "cpu_seconds": cpu, "runs": runs, "events": events}


def measure(count: int) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    plain, plain_cpu = _plain(count)
    dagster = _dagster(count)
    loop_count = min(count, LOOP_SAMPLE)
    loop, _ = _plain(loop_count, one_at_a_time=True)
    return {
        "learners": count,
        "plain_seconds": plain,
        "plain_learners_per_s": count / plain,
        "dagster_seconds": dagster["seconds"],
        "dagster_learners_per_s": count / dagster["seconds"],
        "dagster_overhead_ms_per_learner": 1000 * (dagster["seconds"] - plain) / count,
        "ratio_dagster_to_plain": dagster["seconds"] / plain,
        # CPU time of this process (all its threads): what a core spends, whatever the machine's load.
        "plain_cpu_seconds": plain_cpu,
        "dagster_cpu_seconds": dagster["cpu_seconds"],
        "plain_cpu_ms_per_learner": 1000 * plain_cpu / count,
        "dagster_cpu_ms_per_learner": 1000 * dagster["cpu_seconds"] / count,
        "one_at_a_time_learners": loop_count,
        "one_at_a_time_learners_per_s": loop_count / loop,
        "batched_over_one_at_a_time": (count / plain) / (loop_count / loop),
        "runs": dagster["runs"],
        "events": dagster["events"],
        "load_average_1m": [load_before, os.getloadavg()[0]],
    }


def run(quick: bool = False, sizes: list[int] | None = None) -> dict[str, Any]:
    rows = []
    for count in sizes or ([100] if quick else [10_000, 100_000]):
        rows.append(measure(count))
        print(json.dumps(rows[-1]), flush=True)
    return {"cpus": os.cpu_count(), "rows": rows}


COLUMNS = (
    Column("learners", "learners", "{:,}"),
    Column("plain_seconds", "plain s", "{:.1f}"),
    Column("dagster_seconds", "Dagster s", "{:.1f}"),
    Column("ratio_dagster_to_plain", "Dagster/plain", "{:.2f}x"),
    Column("plain_cpu_ms_per_learner", "plain CPU ms/learner", "{:.2f}"),
    Column("dagster_cpu_ms_per_learner", "Dagster CPU ms/learner", "{:.2f}"),
    Column("dagster_overhead_ms_per_learner", "overhead ms/learner", "{:.2f}"),
    Column("runs", "runs"),
    Column("events", "events", "{:,}"),
    Column("one_at_a_time_learners_per_s", "1-by-1 learners/s", "{:.1f}"),
    Column("batched_over_one_at_a_time", "batched/1-by-1", "{:.1f}x"),
    Column("load_average_1m", "load", "{0[0]:.1f}-{0[1]:.1f}"),
)


def table(result: dict[str, Any]) -> str:
    title = "Local training (activity sensor ticks + training runs + sessions + clone files), SQLite"
    return report_table(result["rows"], COLUMNS, title)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", type=int, nargs="+", help="learner counts (default 10,000 and 100,000)")
    args = parser.parse_args(argv)
    run_and_report("training_runs", partial(run, sizes=args.sizes), table, args.quick)


if __name__ == "__main__":
    main()
