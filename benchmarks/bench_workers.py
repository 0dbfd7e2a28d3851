"""A week's local training shared by two Celery workers, against one worker and against no Dagster.

One deployment as several hosts would share it: registry and Dagster instance on PostgreSQL (a
database of the benchmark's own, dropped at the end; `deploy/dagster.yaml`), the broker on Redis
(127.0.0.1:6379, a queue of the benchmark's own), one model store. N learners with a clone and 30
interactions each. Three weeks of the same work, each week's activity new to every learner:

- **plain**: `train_learners_locally` over all N in this process, one thread (no Dagster, no Celery);
- **one worker**: `learner_activity_sensor` ticked, its two runs launched together; one Celery
  worker (solo pool: one thread) executes both steps, one after the other;
- **two workers**: the same with two workers, one thread each.

Reported: wall seconds from launch to both runs ended, the workers each run's step ran on, and
that every learner has exactly one training session per week (nothing trained twice), the ratio
of one worker to two and of two workers to plain, and the load average.

    python -m benchmarks.bench_workers              # 20,000 learners
    python -m benchmarks.bench_workers --quick      # 2,000
    python -m benchmarks.bench_workers --learners 8000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from benchmarks.report import Column, run_and_report
from benchmarks.report import table as text_table

ROOT = Path(__file__).resolve().parents[1]
ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/0"
INTERACTIONS = 30


@contextmanager
def _database() -> Iterator[str]:
    from aivo_fl.config import normalize_database_url

    admin = sa.create_engine(normalize_database_url(ADMIN_URL), isolation_level="AUTOCOMMIT")
    name = f"aivo_fl_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.engine.make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _environment(root: Path, url: str, queue: str) -> dict[str, str]:
    pg = sa.engine.make_url(url)
    home = root / "dagster_home"
    home.mkdir(exist_ok=True)
    shutil.copy(ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
    return {
        "USE_FEDERATED_LEARNING": "true",
        "DATABASE_URL": url,
        "AIVO_MAIN_MODEL_PATH": str(root / "main-aivo"),
        "AIVO_LEARNER_MODELS_PATH": str(root / "learners"),
        "AGGREGATION_LOG_PATH": str(root / "aggregation.log"),
        "TRAINING_EPOCHS": "2",
        "CURRICULUM_SAMPLES": "1000",
        "TORCH_NUM_THREADS": "1",
        "CELERY_BROKER_URL": REDIS_URL,
        "CELERY_QUEUE": queue,
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_HOST": pg.host or "127.0.0.1",
        "DAGSTER_PG_PORT": str(pg.port or 5432),
        "DAGSTER_PG_USER": pg.username or "postgres",
        "DAGSTER_PG_PASSWORD": pg.password or "",
        "DAGSTER_PG_DB": pg.database or "",
    }


@contextmanager
def celery_workers(root: Path, queue: str, count: int) -> Iterator[list[str]]:
    """`count` workers on `queue`, one thread each; their names once all are ready."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1"}
    started = []
    try:
        for _ in range(count):
            name = f"bench-{uuid.uuid4().hex[:6]}"
            (root / name).mkdir()
            log = root / f"{name}.log"
            command = [str(bin_dir / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app", "-n", name]
            command += ["-y", str(ROOT / "deploy" / "celery.yaml"), "-q", queue, "--", "--pool=solo"]
            with log.open("wb") as out:
                process = subprocess.Popen(
                    command, env=env, cwd=root / name, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                )
            started.append((process, name, log))
        for process, _, log in started:
            while "ready." not in log.read_text(errors="replace"):
                if process.poll() is not None:
                    raise RuntimeError(f"Celery worker died:\n{log.read_text(errors='replace')[-3000:]}")
                time.sleep(0.5)
        yield [f"{name}@{os.uname().nodename}" for _, name, _ in started]
    finally:
        for process, _, _ in started:
            if process.poll() is None:
                os.killpg(process.pid, 15)
                process.wait(60)


def train_learners_job() -> Any:
    from aivo_fl.config import load_settings
    from aivo_fl.definitions import build_definitions

    return build_definitions(load_settings()).resolve_job_def("train_learners")


def _sessions_per_learner(registry: Any) -> dict[str, int]:
    from aivo_fl.registry.schema import ModelTrainingSession

    query = sa.select(ModelTrainingSession.learnerId, sa.func.count()).group_by(ModelTrainingSession.learnerId)
    with registry.engine.connect() as conn:
        return dict(conn.execute(query).all())


# A run launched in a process of its own, as the daemon's run launcher does.
LAUNCH = """
import json, sys
import dagster as dg
from benchmarks.bench_workers import train_learners_job
with dg.DagsterInstance.get() as instance:
    job = dg.reconstructable(train_learners_job)
    print(dg.execute_job(job, instance=instance, tags=json.loads(sys.argv[1]), raise_on_error=False).run_id)
"""


def _week_through_celery(defs: Any, instance: Any) -> dict[str, Any]:
    """Tick the activity sensor, launch its runs together (a process each), wait for all; what ran
    where, how long."""
    import dagster as dg

    from aivo_fl.defs.ticks import tick_sensor

    requests = tick_sensor(defs, instance, "learner_activity_sensor").run_requests
    started = time.perf_counter()
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", LAUNCH, json.dumps(dict(r.tags))], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        for r in requests
    ]
    run_ids = [process.communicate()[0].strip().splitlines()[-1] for process in processes]
    seconds = time.perf_counter() - started
    if any(instance.get_run_by_id(run_id).status != dg.DagsterRunStatus.SUCCESS for run_id in run_ids):
        raise RuntimeError("a training run failed (see the workers' logs)")
    ran_on = [sorted(_ran_on(instance, run_id)) for run_id in run_ids]
    used = {name for names in ran_on for name in names}
    return {"seconds": seconds, "runs": len(requests), "ran_on": ran_on, "workers_used": len(used)}


def _ran_on(instance: Any, run_id: str) -> set[str]:
    return {
        str(e.dagster_event.event_specific_data.metadata["Celery worker"].value)
        for e in instance.all_logs(run_id)
        if e.dagster_event
        and e.dagster_event.event_type_value == "ENGINE_EVENT"
        and "Celery worker" in e.dagster_event.event_specific_data.metadata
    }


def _prepare(count: int) -> tuple[Any, Any, Any]:
    """Registry, store and definitions from the environment: main 1.0.0 trained, `count` cloned learners."""
    from aivo_fl.config import load_settings
    from aivo_fl.definitions import build_definitions
    from aivo_fl.ml.training.main_model import TrainingConfig
    from aivo_fl.operations.app_simulation import simulate_new_learners
    from aivo_fl.operations.learners import clone_learners
    from aivo_fl.operations.main_model import build_curriculum_dataset, train_and_register_main_model
    from aivo_fl.operations.store import ModelStore
    from aivo_fl.registry import ModelRegistry, migrate

    settings = load_settings()
    registry = ModelRegistry(settings.database_url)
    migrate(registry.engine)
    store = ModelStore.from_settings(settings)
    dataset = build_curriculum_dataset(store, 1000, 0, report=lambda _: None)
    train_and_register_main_model(registry, store, dataset.path, TrainingConfig(epochs=2), report=lambda _: None)
    learners = simulate_new_learners(registry, count, interactions=INTERACTIONS)
    if clone_learners(registry, store, learners).failures:
        raise RuntimeError("cloning failed")
    return registry, store, build_definitions(settings)


def measure(count: int) -> dict[str, Any]:
    import dagster as dg

    from aivo_fl.operations.app_simulation import simulate_activity
    from aivo_fl.operations.learners import train_learners_locally

    queue = f"bench-{uuid.uuid4().hex[:10]}"
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp, _database() as url:
        root = Path(tmp)
        os.environ.update({**_environment(root, url, queue), "PYTHONPATH": str(ROOT)})
        registry, store, defs = _prepare(count)
        started = time.perf_counter()
        pending = [learner for learner, _, _ in registry.learners_with_new_interactions(20)]
        batch = train_learners_locally(registry, store, pending, epochs=5, num_threads=1)
        plain = time.perf_counter() - started
        assert not batch.failures and len(batch.outcomes) == count
        weeks = {}
        with dg.DagsterInstance.from_config(os.environ["DAGSTER_HOME"]) as instance:
            for week, workers in ((2, 1), (3, 2)):
                simulate_activity(registry, pending, week=week, interactions=INTERACTIONS)
                with celery_workers(root, queue, workers):
                    weeks[workers] = _week_through_celery(defs, instance)
                print(weeks[workers], flush=True)
        sessions = _sessions_per_learner(registry)
        registry.engine.dispose()
    if set(sessions.values()) != {3} or len(sessions) != count:
        raise RuntimeError(f"sessions per learner {sorted(set(sessions.values()))}: something trained twice or never")
    return {
        "learners": count,
        "plain_seconds": plain,
        "one_worker_seconds": weeks[1]["seconds"],
        "two_workers_seconds": weeks[2]["seconds"],
        "speedup_two_over_one": weeks[1]["seconds"] / weeks[2]["seconds"],
        "ratio_two_workers_to_plain": weeks[2]["seconds"] / plain,
        "runs": weeks[2]["runs"],
        "workers_used_by_two": weeks[2]["workers_used"],
        "ran_on": weeks[2]["ran_on"],
        "sessions_per_learner_per_week": 1,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }


def run(quick: bool = False, learners: int | None = None) -> dict[str, Any]:
    return {"rows": [measure(learners or (2_000 if quick else 20_000))]}


def table(result: dict[str, Any]) -> str:
    columns = [
        Column("learners", "learners", "{:,}"),
        Column("plain_seconds", "plain s", "{:.1f}"),
        Column("one_worker_seconds", "1 worker s", "{:.1f}"),
        Column("two_workers_seconds", "2 workers s", "{:.1f}"),
        Column("speedup_two_over_one", "1 / 2 workers", "{:.2f}x"),
        Column("ratio_two_workers_to_plain", "2 workers / plain", "{:.2f}x"),
        Column("runs", "runs"),
        Column("workers_used_by_two", "workers used"),
        Column("sessions_per_learner_per_week", "sessions/learner/week"),
        Column("load_before", "load before", "{:.1f}"),
        Column("load_after", "load after", "{:.1f}"),
    ]
    return text_table(result["rows"], columns, "A week's local training on Celery workers (one thread each)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2,000 learners")
    parser.add_argument("--learners", type=int, help="learners (default 20,000)")
    args = parser.parse_args(argv)
    run_and_report("workers", lambda quick: run(quick, args.learners), table, args.quick)


if __name__ == "__main__":
    main()
