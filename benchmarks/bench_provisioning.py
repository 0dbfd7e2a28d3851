"""New learners to registered clones through the Dagster daemon, against the same work without Dagster.

One deployment (SQLite registry holding a trained main 1.0.0, a model store, a Dagster instance on
SQLite as `dagster dev` makes it) and one `dagster-daemon run` process, as an operator runs them:
the daemon ticks `new_learner_sensor` (every 30 s) and launches each requested run in a process of
its own (the default run launcher; steps in-process, no Celery). For each size a wave of N new
learners who completed their baseline is inserted (as the app would), and the benchmark waits until
all N have a registered clone. Reported per size:

- **from the tick**: seconds from the start of the sensor tick that asked for their runs to the
  last clone registered (the goal: 50 learners within 30 s); **from appearance** adds the wait for
  that tick (up to the sensor's 30 s interval).
- **plain**: `clone_learners` (what the cloning asset calls) over the same N learners on a fresh
  deployment, in this process; **plain process**: the same in a fresh Python process, timed from
  its start to its exit (the import of torch and the registry included, as a run process pays it).
- the ratios of *from the tick* to both, the runs the tick asked for, the events they wrote, and
  the load average before and after (the machine is shared).

    python -m benchmarks.bench_provisioning                  # 5, 50, 200 and 10,000
    python -m benchmarks.bench_provisioning --quick          # 5 and 50
    python -m benchmarks.bench_provisioning --sizes 200
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import sqlalchemy as sa

from benchmarks.bench_sensor import trained_deployment
from benchmarks.report import Column, run_and_report
from benchmarks.report import table as text_table

ROOT = Path(__file__).resolve().parents[1]
GOAL_SECONDS_50 = 30.0  # the goal: 50 new learners cloned within 30 s of the tick that sees them
GOAL_RATIO_200 = 3.0  # and Dagster's overhead under 3x the plain work at 200
WAIT_LIMIT = 900  # seconds a wave may take before the benchmark gives up on it
DAGSTER_YAML = """\
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: 4
telemetry:
  enabled: false
"""
PLAIN_CHILD = """\
import sys, time
from aivo_fl.config import load_settings
from aivo_fl.operations.learners import clone_learners
from aivo_fl.operations.store import ModelStore
from aivo_fl.registry import ModelRegistry
settings = load_settings()
registry = ModelRegistry(settings.database_url)
pending = registry.learners_needing_model(limit=int(sys.argv[1]))
batch = clone_learners(registry, ModelStore.from_settings(settings), pending)
assert not batch.failures and len(batch.clones) == int(sys.argv[1]), batch.failures
"""


def _environment(root: Path) -> dict[str, str]:
    """The settings a process of this deployment reads from its environment."""
    return {
        **os.environ,
        "USE_FEDERATED_LEARNING": "true",
        "DATABASE_URL": f"sqlite:///{root / 'registry.db'}",
        "AIVO_MAIN_MODEL_PATH": str(root / "main-aivo"),
        "AIVO_LEARNER_MODELS_PATH": str(root / "learners"),
        "AGGREGATION_LOG_PATH": str(root / "aggregation.log"),
        "DAGSTER_HOME": str(root / "dagster_home"),
        "PYTHONPATH": str(ROOT),
    }


def add_wave(registry: Any, prefix: str, count: int) -> None:
    """The app creating learners who completed their baseline (one bulk insert)."""
    from aivo_fl.registry.schema import Learner, utcnow

    now = utcnow()
    with registry.engine.begin() as conn:
        conn.execute(
            sa.insert(Learner),
            [{"id": f"{prefix}-{i:06d}", "baselineCompletedAt": now, "createdAt": now} for i in range(count)],
        )


def _plain(count: int) -> dict[str, float]:
    """The same cloning without Dagster: in this process, and in a fresh process of its own."""
    from aivo_fl.operations.learners import clone_learners
    from aivo_fl.operations.store import ModelStore

    seconds = {}
    for where in ("in_process", "process"):
        with tempfile.TemporaryDirectory() as tmp:
            settings, registry, _ = trained_deployment(Path(tmp))
            add_wave(registry, "plain", count)
            started = time.perf_counter()
            if where == "in_process":
                batch = clone_learners(registry, ModelStore.from_settings(settings), registry.learners_needing_model())
                assert not batch.failures and len(batch.clones) == count
            else:
                env = _environment(Path(tmp))
                subprocess.run([sys.executable, "-c", PLAIN_CHILD, str(count)], env=env, check=True, cwd=tmp)
            seconds[where] = time.perf_counter() - started
            registry.engine.dispose()
    return seconds


@contextmanager
def _daemon(root: Path) -> Iterator[dg.DagsterInstance]:
    """`dagster-daemon run` on this deployment's code location; stopped (its process group) at the end."""
    home = root / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(DAGSTER_YAML)
    log = (root / "daemon.log").open("wb")
    command = [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(ROOT / "workspace.yaml")]
    daemon = subprocess.Popen(
        command, env=_environment(root), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            yield instance
    finally:
        os.killpg(daemon.pid, 15)
        daemon.wait(60)
        log.close()


def _sensor_ticks(instance: dg.DagsterInstance) -> list[Any]:
    states = [s for s in instance.all_instigator_state() if s.instigator_name == "new_learner_sensor"]
    return [t for s in states for t in instance.get_ticks(s.instigator_origin_id, s.selector_id)]


def _wave(instance: dg.DagsterInstance, registry: Any, count: int, prefix: str) -> dict[str, Any]:
    """Insert `count` learners, wait until all have a clone; when things happened, and what it cost."""
    before = registry.get_statistics()["totalLearnerModels"]
    load_before = os.getloadavg()[0]
    appeared = time.time()
    add_wave(registry, prefix, count)
    while registry.get_statistics()["totalLearnerModels"] < before + count:
        if time.time() - appeared > WAIT_LIMIT:
            raise RuntimeError(f"{count} learners: not all cloned after {WAIT_LIMIT} s (see daemon.log)")
        time.sleep(0.2)
    done = time.time()
    ticks = [t for t in _sensor_ticks(instance) if t.timestamp > appeared and t.run_ids]
    ticks.sort(key=lambda t: t.timestamp)
    run_ids = [run_id for t in ticks for run_id in t.run_ids]
    events = sum(len(instance.all_logs(run_id)) for run_id in run_ids)
    return {
        "learners": count,
        "from_appearance_seconds": done - appeared,
        "from_tick_seconds": done - ticks[0].timestamp,
        "ticks_with_runs": len(ticks),
        "runs": len(run_ids),
        "events": events,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }


def _through_daemon(sizes: list[int]) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _, registry, _ = trained_deployment(root)
        rows = []
        with _daemon(root) as instance:
            deadline = time.time() + 300
            while not _sensor_ticks(instance):  # the daemon and its code server are up
                if time.time() > deadline:
                    raise RuntimeError(f"the daemon never ticked:\n{(root / 'daemon.log').read_text()[-3000:]}")
                time.sleep(1)
            for i, count in enumerate(sizes):
                rows.append(_wave(instance, registry, count, f"wave{i}"))
                print(rows[-1], flush=True)
        registry.engine.dispose()
        shutil.rmtree(root / "learners", ignore_errors=True)
    return rows


def run(quick: bool = False, sizes: list[int] | None = None) -> dict[str, Any]:
    sizes = sizes or ([5, 50] if quick else [5, 50, 200, 10_000])
    rows = _through_daemon(sizes)
    for row in rows:
        plain = _plain(row["learners"])
        row["plain_seconds"], row["plain_process_seconds"] = plain["in_process"], plain["process"]
        row["ratio_to_plain"] = row["from_tick_seconds"] / plain["in_process"]
        row["ratio_to_plain_process"] = row["from_tick_seconds"] / plain["process"]
    return {"goal_seconds_50": GOAL_SECONDS_50, "goal_ratio_200": GOAL_RATIO_200, "rows": rows}


def table(result: dict[str, Any]) -> str:
    columns = [
        Column("learners", "learners", "{:,}"),
        Column("from_tick_seconds", "from tick s", "{:.1f}"),
        Column("from_appearance_seconds", "from appearance s", "{:.1f}"),
        Column("plain_seconds", "plain s", "{:.2f}"),
        Column("plain_process_seconds", "plain process s", "{:.1f}"),
        Column("ratio_to_plain", "x plain", "{:.1f}x"),
        Column("ratio_to_plain_process", "x plain process", "{:.2f}x"),
        Column("runs", "runs"),
        Column("events", "events"),
        Column("load_before", "load before", "{:.1f}"),
        Column("load_after", "load after", "{:.1f}"),
    ]
    title = "New learners to registered clones through the daemon (a process per run) vs. the same cloning plain"
    return text_table(result["rows"], columns, title)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="5 and 50 learners")
    parser.add_argument("--sizes", type=int, nargs="+", help="learner counts (default 5, 50, 200 and 10,000)")
    args = parser.parse_args(argv)
    run_and_report("provisioning", lambda quick: run(quick, args.sizes), table, args.quick)


if __name__ == "__main__":
    main()
