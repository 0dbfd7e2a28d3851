"""The registry's PostgreSQL connection killed (pg_terminate_backend, what a server restart or a
failover does to each client) mid-batch, mid-round and between the sensor's ticks. The test's own
database only: the server is shared, so it is never restarted here.

No batch or round is half recorded: a killed transaction is rolled back whole, a batch retries
per learner on a fresh connection, a round fails with one transient line and the next one runs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from aivo_fl.ml.round.options import PrivacySettings, RoundOptions
from aivo_fl.operations.aggregation import run_federated_aggregation
from aivo_fl.operations.app_simulation import simulate_new_learners
from aivo_fl.operations.errors import EXIT_DATABASE, diagnose
from aivo_fl.operations.learners import clone_learners, train_learners_locally
from aivo_fl.operations.store import ModelStore
from aivo_fl.registry import ModelRegistry, migrate
from aivo_fl.registry.schema import ModelTrainingSession, ModelVersionStatus
from tests.defs.conftest import Deployment
from tests.defs.test_sensors import add_learners, tick
from tests.postgres import admin_engine
from tests.trained import TrainedMain

POSTGRES = pytest.mark.parametrize("backend", ["postgres"])


def _terminate(pids: list[int]) -> None:
    with admin_engine().connect() as admin:
        for pid in pids:
            admin.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        for _ in range(100):  # until the backends are gone, so the next statement meets a dead socket
            alive = admin.scalar(sa.text("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(:p)"), {"p": pids})
            if not alive:
                return
            time.sleep(0.02)


@contextmanager
def killed_at(engine: sa.Engine, statement_start: str) -> Iterator[list[str]]:
    """Terminate the connection about to run the first statement starting with `statement_start`
    (inside its transaction): that statement meets a dead connection. Yields what was killed."""
    killed: list[str] = []

    def before(conn: sa.Connection, cursor: object, statement: str, *_: object) -> None:
        if not killed and statement.lstrip().startswith(statement_start):
            killed.append(statement.split("\n")[0][:60])
            _terminate([conn.connection.dbapi_connection.get_backend_pid()])

    sa.event.listen(engine, "before_cursor_execute", before)
    try:
        yield killed
    finally:
        sa.event.remove(engine, "before_cursor_execute", before)


@pytest.fixture
def world(tmp_path: Path, postgres_url: str, trained_main: TrainedMain) -> Iterator[tuple[ModelRegistry, ModelStore]]:
    registry = ModelRegistry(postgres_url)
    migrate(registry.engine)
    store = ModelStore(tmp_path / "main-aivo", tmp_path / "learners")
    trained_main.install(registry, store)
    yield registry, store
    registry.engine.dispose()


def _sessions(registry: ModelRegistry) -> list[str]:
    with registry.engine.connect() as conn:
        return sorted(conn.scalars(sa.select(ModelTrainingSession.learnerId)))


@pytest.mark.parametrize(
    "statement",
    ['INSERT INTO "ModelTrainingSession"', 'SELECT "LearnerInteraction"."learnerId"'],
    ids=["while-recording", "while-reading"],
)
def test_the_connection_killed_mid_batch(world: tuple[ModelRegistry, ModelStore], statement: str) -> None:
    registry, store = world
    learners = simulate_new_learners(registry, 6, interactions=40)
    clone_learners(registry, store, learners)

    with killed_at(registry.engine, statement) as killed:
        batch = train_learners_locally(registry, store, learners, epochs=1)

    assert killed, "the connection was never killed"
    # The killed transaction left nothing; the retry on a new connection recorded each learner once.
    assert not batch.failures and sorted(batch.outcomes) == sorted(learners)
    assert _sessions(registry) == sorted(learners)


def test_the_connection_killed_mid_round(world: tuple[ModelRegistry, ModelStore]) -> None:
    registry, store = world
    learners = simulate_new_learners(registry, 4, interactions=40)
    clone_learners(registry, store, learners)
    assert not train_learners_locally(registry, store, learners, epochs=1).failures
    options = RoundOptions(min_learners=2, learning_rate=1e-6)
    privacy = PrivacySettings(enabled=False, noise_multiplier=0.0, clip_norm=1.0)

    def aggregate():  # type: ignore[no-untyped-def]
        return run_federated_aggregation(
            registry, store, privacy, options, report=lambda _: None, rng=np.random.default_rng(0)
        )

    with killed_at(registry.engine, 'INSERT INTO "FederatedUpdate"') as killed, pytest.raises(Exception) as failed:
        aggregate()

    assert killed
    diagnosis = diagnose(failed.value)
    assert diagnosis.transient and diagnosis.exit_code == EXIT_DATABASE and "\n" not in diagnosis.line
    # Nothing of the round: no update, no contribution, no candidate version row; 1.0.0 still active.
    assert registry.get_federated_updates() == []
    assert [(v.version, v.status) for v in registry.list_main_versions()] == [("1.0.0", ModelVersionStatus.ACTIVE)]

    outcome = aggregate()  # the lease was released; the orphaned candidate's number is skipped
    assert outcome.promoted and outcome.new_version == "1.2.0"
    assert len(registry.get_federated_updates()) == 1


@POSTGRES
def test_the_sensor_ticks_on_after_every_connection_is_dropped(deployment: Deployment) -> None:
    add_learners(deployment, 1)
    assert len(tick(deployment, "new_learner_sensor").run_requests) == 1
    database = deployment.registry.engine.url.database
    with admin_engine().connect() as admin:
        pids = list(
            admin.scalars(
                sa.text("SELECT pid FROM pg_stat_activity WHERE datname = :d AND pid <> pg_backend_pid()"),
                {"d": database},
            )
        )
    assert pids, "the sensor's and the registry's connections are pooled"
    _terminate(pids)  # what a restart of the server does to each of them

    add_learners(deployment, 2, prefix="later")
    data = tick(deployment, "new_learner_sensor")
    assert len(data.run_requests) >= 1  # the learners added since are asked for
