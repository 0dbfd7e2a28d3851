"""Learners and interactions read from the app's own tables, under the app's names (the mapping).

On a PostgreSQL database shaped the way Prisma leaves AIVO's (tests/aivo_app.py): the migration
creates nothing beside the app's tables and downgrades to exactly the app's state; the registry
reads baselines, deletions and interactions (`real[]` features, a boolean head, cuid ids) through
the mapping; it never writes the app's tables, and erasure removes only what aivo-fl holds.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import numpy as np
import pytest
import sqlalchemy as sa

from aivo_fl.config import load_settings
from aivo_fl.ml.interactions import BadFeatures, decode_feature_row
from aivo_fl.ml.simulation.world import generate_learner
from aivo_fl.registry import ModelRegistry, RegistryError, TrainingSessionInput, migrate
from aivo_fl.registry.app_tables import AppTables
from aivo_fl.registry.database import head_revision
from aivo_fl.registry.schema import utcnow
from tests.aivo_app import (
    APP_MAPPING,
    add_app_interactions,
    add_app_learner,
    app_rows,
    create_aivo_database,
    delete_in_app,
)
from tests.registry.test_migrations import _state

KEY = b"an-erasure-key-for-tests"


@pytest.fixture
def aivo(postgres_url: str) -> ModelRegistry:
    """AIVO's database with two learners (one without a baseline yet), migrated with the mapping."""
    tables = AppTables.from_settings(load_settings(DATABASE_URL=postgres_url, **APP_MAPPING))
    registry = ModelRegistry(postgres_url, app_tables=tables)
    create_aivo_database(registry.engine)
    add_app_learner(registry.engine, "ada", interactions=40)
    add_app_learner(registry.engine, "bob", baseline_done=False)
    migrate(registry.engine, app_tables=tables)
    yield registry
    registry.engine.dispose()


def test_migration_creates_nothing_beside_the_app_tables_and_downgrades_to_their_state(postgres_url: str) -> None:
    tables = AppTables.from_settings(load_settings(DATABASE_URL=postgres_url, **APP_MAPPING))
    engine = sa.create_engine(sa.engine.make_url(postgres_url).set(drivername="postgresql+psycopg2"))
    create_aivo_database(engine)
    add_app_learner(engine, "ada", interactions=8)
    before, rows = _state(engine), app_rows(engine)

    assert migrate(engine, app_tables=tables) == (None, head_revision())
    names = set(sa.inspect(engine).get_table_names())
    assert {"MainModelVersion", "ModelTrainingSession", "FederatedUpdate"} <= names
    assert "LearnerInteraction" not in names  # our stand-in is not created beside the app's table
    learner_columns = [c["name"] for c in sa.inspect(engine).get_columns("Learner")]
    assert "baselineCompletedAt" not in learner_columns  # nor is the app's "Learner" extended
    assert app_rows(engine) == rows
    assert migrate(engine, app_tables=tables) == (head_revision(), head_revision())

    assert migrate(engine, "base", app_tables=tables) == (head_revision(), None)
    assert _state(engine) == before and app_rows(engine) == rows
    engine.dispose()


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"APP_LEARNER_TABLE": "Student"}, 'APP_LEARNER_TABLE: no table or view "Student"'),
        (
            {"APP_INTERACTION_COLUMNS": '{"difficulty": "difficultyLevel", "success": "passed"}'},
            'APP_INTERACTION_COLUMNS: "LearningInteraction" has no column for success (as passed)',
        ),
    ],
)
def test_a_mapping_that_misses_the_database_is_refused_before_anything_is_created(
    postgres_url: str, mapping: dict[str, str], message: str
) -> None:
    tables = AppTables.from_settings(load_settings(DATABASE_URL=postgres_url, **(APP_MAPPING | mapping)))
    engine = sa.create_engine(sa.engine.make_url(postgres_url).set(drivername="postgresql+psycopg2"))
    create_aivo_database(engine)
    with pytest.raises(RegistryError, match=re.escape(message)):
        migrate(engine, app_tables=tables)
    assert "MainModelVersion" not in sa.inspect(engine).get_table_names()
    engine.dispose()


def test_registry_reads_the_app_tables_through_the_mapping(aivo: ModelRegistry) -> None:
    assert aivo.learners_needing_model() == ["ada"]  # bob has not finished the baseline
    interactions = aivo.get_interactions("ada")
    expected = generate_learner("ada", 0, 40)
    stored = np.concatenate([expected.train.features, expected.heldout.features])
    np.testing.assert_array_equal(interactions.features, stored)  # real[] in, float32 rows out, in time order
    correct = np.concatenate([expected.train.targets["success"], expected.heldout.targets["success"]])
    np.testing.assert_array_equal(interactions.targets["success"], correct)  # the app's boolean head

    aivo.register_personalized_model("ada", {"federatedLearning": True})
    assert aivo.learners_needing_model() == []
    [(learner, new, _)] = aivo.learners_with_new_interactions(1)
    assert (learner, new) == ("ada", 40)
    add_app_interactions(aivo.engine, "ada", 5, seed=1)
    assert aivo.learners_with_new_interactions(1)[0][1] == 45

    delete_in_app(aivo.engine, "ada")
    assert aivo.learners_with_new_interactions(1) == []
    with pytest.raises(RegistryError, match="Unknown learner ada"):
        aivo.get_interactions("ada")  # a deleted learner's interactions are never read again


def test_aivo_fl_never_writes_the_app_tables(aivo: ModelRegistry) -> None:
    rows = app_rows(aivo.engine)
    with pytest.raises(RegistryError, match="aivo-fl only reads them"):
        aivo.add_learner("carol", baseline_completed_at=utcnow())
    with pytest.raises(RegistryError, match="aivo-fl only reads them"):
        aivo.add_interactions(
            "ada", np.zeros((1, 256), np.float32), {"difficulty": [0], "modality": [0], "success": [0]}
        )
    assert app_rows(aivo.engine) == rows


def _session(learner_id: str) -> TrainingSessionInput:
    now = utcnow()
    return TrainingSessionInput(learner_id, "1.0.0", None, 30, 5, 1.0, 0.5, 0.8, 0.6, 0.1, "/d", now, now)


def test_erasure_removes_what_aivo_fl_holds_and_leaves_the_app_rows_to_the_app(aivo: ModelRegistry) -> None:
    aivo.register_personalized_model("ada", {"federatedLearning": True})
    aivo.record_training_session(_session("ada"))
    assert aivo.deleted_learner_ids() == []
    delete_in_app(aivo.engine, "ada")
    rows = app_rows(aivo.engine)
    assert aivo.deleted_learner_ids() == ["ada"]

    report = aivo.erase_learner("ada", KEY)

    assert (report.training_sessions, report.personalized_models) == (1, 1)
    assert (report.interactions, report.learner_rows) == (0, 0)  # the app's rows: the app's to remove
    assert app_rows(aivo.engine) == rows
    assert aivo.get_personalized_model("ada") is None
    with aivo.engine.connect() as conn:
        sessions = conn.scalar(sa.text("""SELECT count(*) FROM "ModelTrainingSession" WHERE "learnerId" = 'ada'"""))
    assert sessions == 0
    # Nothing of theirs is left here, so the erasure sensor stops asking although the app keeps the row.
    assert aivo.deleted_learner_ids() == []


def test_features_may_be_packed_bytes_numeric_arrays_or_json() -> None:
    vector = np.arange(256, dtype=np.float32) / 7
    packed = decode_feature_row(vector.astype("<f4").tobytes())
    listed = decode_feature_row(vector.tolist())
    texted = decode_feature_row("[" + ", ".join(map(str, vector.tolist())) + "]")
    for decoded in (packed, listed, texted):
        np.testing.assert_allclose(decoded, vector, rtol=1e-6)
    with pytest.raises(BadFeatures, match=r"shape \(2,\), expected \(256,\)"):
        decode_feature_row([1.0, 2.0])
    with pytest.raises(BadFeatures, match="12 bytes, expected 256 packed float32s"):
        decode_feature_row(b"\0" * 12)


def test_a_view_over_differently_shaped_app_tables_is_read_like_a_table(sqlite_url: str) -> None:
    """The app keeps a boolean baseline flag and JSON-text features: a view presents what aivo-fl reads."""
    tables = AppTables.mapped("fl_learners", "fl_events", interaction_columns={"learnerId": "user_id"})
    registry = ModelRegistry(sqlite_url, app_tables=tables)
    vector = [i / 256 for i in range(256)]
    with registry.engine.begin() as conn:
        for statement in (
            "CREATE TABLE users (uid TEXT PRIMARY KEY, baseline_done BOOLEAN, baseline_at TIMESTAMP, "
            "removed_at TIMESTAMP)",
            "CREATE TABLE events (pk INTEGER PRIMARY KEY, user_id TEXT, vec TEXT, lvl INT, kind INT, ok INT, "
            "at TIMESTAMP)",
            "CREATE VIEW fl_learners AS SELECT uid AS id, CASE WHEN baseline_done THEN baseline_at END "
            "AS baselineCompletedAt, removed_at AS deletedAt FROM users",
            "CREATE VIEW fl_events AS SELECT pk AS id, user_id, vec AS features, lvl AS difficulty, kind AS modality, "
            "ok AS success, at AS createdAt FROM events",
            "INSERT INTO users VALUES ('u1', 1, '2026-11-01 10:00:00', NULL), ('u2', 0, '2026-11-01 10:00:00', NULL)",
        ):
            conn.execute(sa.text(statement))
        conn.execute(
            sa.text("INSERT INTO events (user_id, vec, lvl, kind, ok, at) VALUES ('u1', :vec, 3, 2, 1, :at)"),
            [{"vec": json.dumps(vector), "at": f"2026-11-0{day} 10:00:00"} for day in (3, 2)],
        )
    migrate(registry.engine, app_tables=tables)
    registry.require_current_schema()

    assert registry.learners_needing_model() == ["u1"]  # u2's flag says the baseline is not done
    interactions = registry.get_interactions("u1")
    np.testing.assert_allclose(interactions.features, np.array([vector, vector], dtype=np.float32))
    assert interactions.targets["difficulty"].tolist() == [3, 3]
    registry.register_personalized_model("u1", {})
    [(learner, new, marker)] = registry.learners_with_new_interactions(1)
    assert (learner, new) == ("u1", 2)
    assert marker == round(datetime(2026, 11, 3, 10, tzinfo=UTC).timestamp() * 1e6)  # the newest time
    registry.engine.dispose()


def test_a_personalized_model_row_from_before_activation_gets_the_federated_clone(aivo: ModelRegistry) -> None:
    with aivo.engine.begin() as conn:
        conn.execute(
            sa.text(
                'INSERT INTO "PersonalizedModel" ("id", "learnerId", "baseModel", "status", "updatedAt") '
                "VALUES ('clmlegacy0000000000000001', 'ada', 'aivo-legacy-model', 'ACTIVE', now())"
            )
        )
    assert aivo.learners_needing_model() == ["ada"]  # the app's row has no federatedLearning metadata
    aivo.register_personalized_models({"ada": {"federatedLearning": True, "sourceVersion": "1.0.0"}})
    assert aivo.learners_needing_model() == []
    with aivo.engine.connect() as conn:
        row = conn.execute(
            sa.text("""SELECT "id", "baseModel", "metadata" FROM "PersonalizedModel" WHERE "learnerId" = 'ada'""")
        ).one()
    # The app's row became the clone's: its id and baseModel stay, the metadata is the clone's.
    assert tuple(row) == (
        "clmlegacy0000000000000001",
        "aivo-legacy-model",
        {"federatedLearning": True, "sourceVersion": "1.0.0"},
    )
