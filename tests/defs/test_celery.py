"""The Celery path: a real worker subprocess executes a real cloning run and a real aggregation run.

Everything is shared the way several hosts would share it: Dagster's instance on PostgreSQL
(deploy/dagster.yaml), the registry in the same database, the broker on Redis, the model store
under one path; the worker gets its settings from its own environment, not from this process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from aivo_fl.config import load_settings
from aivo_fl.definitions import build_definitions
from aivo_fl.defs.ticks import tick_sensor
from aivo_fl.operations.app_simulation import simulate_new_learners
from aivo_fl.registry import ModelRegistry, migrate

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = os.environ.get("AIVO_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
LEARNERS = 4
RUN_TIMEOUT = 300  # seconds; a stuck worker fails the test instead of hanging it


def clone_learners_job() -> dg.JobDefinition:
    # What the worker rebuilds: the job from this code location, bound to *its* environment's settings.
    return build_definitions(load_settings()).resolve_job_def("clone_learners")


def federated_aggregation_job() -> dg.JobDefinition:
    return build_definitions(load_settings()).resolve_job_def("federated_aggregation")


@dataclass
class Cluster:
    """A running Celery worker: its environment, its name (as its events report it), its log."""

    env: dict[str, str]
    worker_name: str
    log: Path
    pid: int


def _redis_or_skip() -> None:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"Redis not reachable at {REDIS_URL}: {exc}")
        pytest.skip(f"Redis not reachable at {REDIS_URL}: {exc}")


def _wait_ready(worker: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if "ready." in log.read_text(errors="replace"):
            return
        if worker.poll() is not None:
            break
        time.sleep(0.5)
    pytest.fail(f"Celery worker did not start:\n{log.read_text(errors='replace')[-3000:]}")


def _stop(worker: subprocess.Popen[bytes]) -> None:
    # The worker is the leader of its own session: end it and the `celery` process it spawned.
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(worker.pid, sig)
        except ProcessLookupError:
            return
        try:
            worker.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _settings_environment(postgres_url: str, tmp_path: Path, queue: str) -> dict[str, str]:
    """What every process of this deployment reads: the shared store, databases, broker and queue."""
    url = sa.engine.make_url(postgres_url)
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    shutil.copy(ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
    return {
        "USE_FEDERATED_LEARNING": "true",
        "DATABASE_URL": postgres_url,
        "AIVO_MAIN_MODEL_PATH": str(tmp_path / "shared" / "main-aivo"),
        "AIVO_LEARNER_MODELS_PATH": str(tmp_path / "shared" / "learners"),
        "AGGREGATION_LOG_PATH": str(tmp_path / "shared" / "aggregation.log"),
        "TRAINING_EPOCHS": "10",
        "CURRICULUM_SAMPLES": "2000",
        "CELERY_BROKER_URL": REDIS_URL,
        "CELERY_QUEUE": queue,
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_HOST": url.host or "127.0.0.1",
        "DAGSTER_PG_PORT": str(url.port or 5432),
        "DAGSTER_PG_USER": url.username or "postgres",
        "DAGSTER_PG_PASSWORD": url.password or "",
        "DAGSTER_PG_DB": url.database or "",
    }


@contextmanager
def celery_workers(tmp_path: Path, queue: str, count: int) -> Iterator[list[Cluster]]:
    """`count` Celery workers on `queue`, one thread each (solo pool), with this environment; all of
    them ready before the block runs, all stopped after it."""
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
    }
    workers: list[tuple[subprocess.Popen[bytes], Cluster]] = []
    try:
        for _ in range(count):
            name = f"aivo-test-{uuid.uuid4().hex[:6]}"
            log = tmp_path / f"{name}.log"
            folder = tmp_path / name  # not the test's working directory: no shared .env, no shared cwd
            folder.mkdir()
            command = [str(bin_dir / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app", "-n", name]
            command += ["-y", str(ROOT / "deploy" / "celery.yaml"), "-q", queue, "--", "--pool=solo"]
            with log.open("wb") as out:
                process = subprocess.Popen(
                    command, env=env, cwd=folder, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                )
            workers.append((process, Cluster(env, name, log, process.pid)))
        for process, worker in workers:
            _wait_ready(process, worker.log)
        yield [worker for _, worker in workers]
    finally:
        for process, _ in workers:
            _stop(process)


@pytest.fixture
def cluster(postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    _redis_or_skip()
    queue = f"aivo-test-{uuid.uuid4().hex[:10]}"  # this test's own queue: other workers never take its steps
    for name, value in _settings_environment(postgres_url, tmp_path, queue).items():
        monkeypatch.setenv(name, value)
    with celery_workers(tmp_path, queue, 1) as [worker]:
        yield worker


def _execute(job: Callable[[], dg.JobDefinition], instance: dg.DagsterInstance, log: Path, **kwargs: object) -> Any:
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            recon = dg.reconstructable(job)
            outcome["result"] = dg.execute_job(recon, instance=instance, raise_on_error=False, **kwargs)
        except Exception as exc:  # reported below with the worker's log
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(RUN_TIMEOUT)
    if "result" not in outcome:
        pytest.fail(f"run did not finish ({outcome.get('error')!r}):\n{log.read_text(errors='replace')[-3000:]}")
    return outcome["result"]  # type: ignore[return-value]


def _celery_workers(result: Any) -> set[str]:
    """The workers that the run's engine events say executed its steps."""
    return {
        str(event.event_specific_data.metadata["Celery worker"].value)
        for event in result.all_events
        if event.event_type_value == "ENGINE_EVENT" and "Celery worker" in event.event_specific_data.metadata
    }


def test_celery_worker_executes_cloning_and_aggregation(cluster: Cluster, tmp_path: Path) -> None:
    settings = load_settings()
    registry = ModelRegistry(settings.database_url)
    migrate(registry.engine)
    defs = build_definitions(settings)
    with dg.DagsterInstance.from_config(os.environ["DAGSTER_HOME"]) as instance:
        assert defs.resolve_job_def("train_main_model").execute_in_process(instance=instance).success
        learners = simulate_new_learners(registry, LEARNERS)

        requests = tick_sensor(defs, instance, "new_learner_sensor").run_requests
        assert requests
        for request in requests:  # one run over the learners' buckets
            cloned = _execute(clone_learners_job, instance, cluster.log, tags=request.tags)
            assert cloned.success, cluster.log.read_text(errors="replace")[-3000:]
            assert _celery_workers(cloned) == {f"{cluster.worker_name}@{os.uname().nodename}"}
        for learner in learners:
            record = registry.get_personalized_model(learner)
            assert record is not None and record.metadata["sourceVersion"] == "1.0.0"
            assert Path(record.metadata["clonedModelPath"]).is_dir()

        for request in tick_sensor(defs, instance, "learner_activity_sensor").run_requests:
            trained = defs.resolve_job_def("train_learners").execute_in_process(instance=instance, tags=request.tags)
            assert trained.success

        aggregated = _execute(federated_aggregation_job, instance, cluster.log)
        # The round ran on the worker, and so did its checks (whether the validation gate promotes
        # this tiny test model is the checks' business, asserted in test_federated_cycle).
        assert aggregated.is_node_success("federated_main_model"), cluster.log.read_text(errors="replace")[-3000:]
        assert _celery_workers(aggregated) == {f"{cluster.worker_name}@{os.uname().nodename}"}
        checks = {evaluation.check_name for evaluation in aggregated.get_asset_check_evaluations()}
        assert checks == {"candidate_not_degraded", "privacy_budget_not_exceeded"}
        [update] = registry.get_federated_updates()
        assert sorted(update["contributingLearners"]) == learners
        # The worker appended the round's log under the shared path it was given, not in its own cwd.
        assert aggregated.run_id in (tmp_path / "shared" / "aggregation.log").read_text()
    registry.engine.dispose()


def train_learners_job() -> dg.JobDefinition:
    return build_definitions(load_settings()).resolve_job_def("train_learners")


def _sessions_per_learner(registry: ModelRegistry) -> dict[str, int]:
    from aivo_fl.registry.schema import ModelTrainingSession

    query = sa.select(ModelTrainingSession.learnerId, sa.func.count()).group_by(ModelTrainingSession.learnerId)
    with registry.engine.connect() as conn:
        return {learner: count for learner, count in conn.execute(query)}


# A run launched in a process of its own, as the daemon's run launcher does (two runs orchestrated by
# threads of one process contend for its locks; the processes share nothing but the instance).
LAUNCH = """
import json, sys
import dagster as dg
from tests.defs.test_celery import train_learners_job
with dg.DagsterInstance.get() as instance:
    job = dg.reconstructable(train_learners_job)
    print(dg.execute_job(job, instance=instance, tags=json.loads(sys.argv[1]), raise_on_error=False).run_id)
"""


def _launch_together(requests: list[dg.RunRequest], env: dict[str, str]) -> list[str]:
    """Every requested run launched at once, each in its own process; their run ids once all ended."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", LAUNCH, json.dumps(dict(request.tags))],
            env={**os.environ, **env},
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for request in requests
    ]
    run_ids = []
    for process in processes:
        out, err = process.communicate(timeout=RUN_TIMEOUT)
        assert process.returncode == 0, err[-3000:]
        run_ids.append(out.strip().splitlines()[-1])
    return run_ids


def _workers_of(instance: dg.DagsterInstance, run_id: str) -> set[str]:
    return {
        str(e.dagster_event.event_specific_data.metadata["Celery worker"].value)
        for e in instance.all_logs(run_id)
        if e.dagster_event
        and e.dagster_event.event_type_value == "ENGINE_EVENT"
        and "Celery worker" in e.dagster_event.event_specific_data.metadata
    }


def test_two_workers_share_a_week_of_training(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aivo_fl.defs import sensors
    from aivo_fl.operations.learners import clone_learners
    from aivo_fl.operations.store import ModelStore

    _redis_or_skip()
    queue = f"aivo-test-{uuid.uuid4().hex[:10]}"
    for name, value in _settings_environment(postgres_url, tmp_path, queue).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(sensors, "LEARNERS_PER_RUN", 10)  # 20 learners: the sensor's two runs
    settings = load_settings()
    registry = ModelRegistry(settings.database_url)
    migrate(registry.engine)
    defs = build_definitions(settings)
    with celery_workers(tmp_path, queue, 2) as workers, dg.DagsterInstance.from_config(settings_home()) as instance:
        assert defs.resolve_job_def("train_main_model").execute_in_process(instance=instance).success
        learners = simulate_new_learners(registry, 20)
        assert not clone_learners(registry, ModelStore.from_settings(settings), learners).failures

        requests = tick_sensor(defs, instance, "learner_activity_sensor").run_requests
        assert len(requests) == 2
        run_ids = _launch_together(requests, {"PYTHONPATH": str(ROOT)})
        runs = [instance.get_run_by_id(run_id) for run_id in run_ids]
        logs = [w.log.read_text(errors="replace")[-2000:] for w in workers]
        assert all(run is not None and run.status == dg.DagsterRunStatus.SUCCESS for run in runs), logs
        # One run on each worker, and every learner trained exactly once.
        ran_on = sorted(sorted(_workers_of(instance, run_id)) for run_id in run_ids)
        host = os.uname().nodename
        assert ran_on == sorted([f"{w.worker_name}@{host}"] for w in workers)
        assert _sessions_per_learner(registry) == dict.fromkeys(learners, 1)
    registry.engine.dispose()


def settings_home() -> str:  # the DAGSTER_HOME the environment above names
    return os.environ["DAGSTER_HOME"]


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = RUN_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_a_killed_worker_s_run_ends_and_its_learners_are_trained_by_the_next(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aivo_fl.defs import sensors
    from aivo_fl.operations.learners import clone_learners
    from aivo_fl.operations.store import ModelStore

    _redis_or_skip()
    queue = f"aivo-test-{uuid.uuid4().hex[:10]}"
    for name, value in _settings_environment(postgres_url, tmp_path, queue).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(sensors, "LEARNERS_PER_RUN", 10)
    settings = load_settings()
    registry = ModelRegistry(settings.database_url)
    migrate(registry.engine)
    defs = build_definitions(settings)
    with celery_workers(tmp_path, queue, 2) as workers, dg.DagsterInstance.from_config(settings_home()) as instance:
        assert defs.resolve_job_def("train_main_model").execute_in_process(instance=instance).success
        learners = simulate_new_learners(registry, 20)
        assert not clone_learners(registry, ModelStore.from_settings(settings), learners).failures
        requests = tick_sensor(defs, instance, "learner_activity_sensor").run_requests
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        launches = [
            subprocess.Popen([sys.executable, "-c", LAUNCH, json.dumps(dict(r.tags))], env=env, cwd=ROOT, text=True)
            for r in requests
        ]
        # Both steps taken, one by each worker; the second worker dies in the middle of its step.
        _wait_for(lambda: all("received" in w.log.read_text(errors="replace") for w in workers), "both tasks")
        os.killpg(workers[1].pid, signal.SIGKILL)
        _wait_for(lambda: any(p.poll() is not None for p in launches), "the surviving worker's run")
        [stuck] = [p for p in launches if p.poll() is None]
        time.sleep(5)
        assert stuck.poll() is None  # its run waits for a result that never comes
        # What run monitoring does past the run's max runtime: report it canceling, interrupt its
        # process, and it ends failed (it has no run launcher here to send the interrupt through).
        [hung] = instance.get_runs(dg.RunsFilter(job_name="train_learners", statuses=[dg.DagsterRunStatus.STARTED]))
        instance.report_run_canceling(hung, message="Canceling due to exceeding maximum runtime of 3600 seconds.")
        stuck.send_signal(signal.SIGINT)
        stuck.wait(RUN_TIMEOUT)
        statuses = sorted(r.status.value for r in instance.get_runs(dg.RunsFilter(job_name="train_learners")))
        assert statuses in (["CANCELED", "SUCCESS"], ["FAILURE", "SUCCESS"])
        trained = _sessions_per_learner(registry)
        assert 0 < len(trained) < len(learners) and set(trained.values()) == {1}

        # The next tick asks for the learners the dead worker left; the surviving worker trains them.
        [again] = tick_sensor(defs, instance, "learner_activity_sensor").run_requests
        [run_id] = _launch_together([again], {"PYTHONPATH": str(ROOT)})
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.SUCCESS
        assert _workers_of(instance, run_id) == {f"{workers[0].worker_name}@{os.uname().nodename}"}
        assert _sessions_per_learner(registry) == dict.fromkeys(learners, 1)  # nobody trained twice
    registry.engine.dispose()
