"""Alembic creates exactly the schema the models describe, on both backends, and can undo it."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from aivo_fl.registry import create_registry_engine, migrate
from aivo_fl.registry.database import current_revision, head_revision
from aivo_fl.registry.schema import ALEMBIC_VERSION_TABLE, metadata

REGISTRY_TABLES = {
    "Learner",
    "LearnerInteraction",
    "MainModelVersion",
    "PersonalizedModel",
    "ModelTrainingSession",
    "FederatedUpdate",
    "FederatedUpdateContribution",
    "AggregationLock",
}


def test_upgrade_matches_models_and_downgrade_removes_everything(database_url: str) -> None:
    engine = create_registry_engine(database_url)
    assert migrate(engine) == (None, head_revision())

    inspector = sa.inspect(engine)
    assert set(inspector.get_table_names()) >= REGISTRY_TABLES
    with engine.connect() as conn:
        diff = compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": True, "version_table": ALEMBIC_VERSION_TABLE}),
            metadata,
        )
    assert diff == [], f"schema drifted from the models: {diff}"

    assert migrate(engine, "base") == (head_revision(), None)
    left = set(sa.inspect(engine).get_table_names()) - {ALEMBIC_VERSION_TABLE}
    assert left == set()
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            assert conn.scalar(sa.text("SELECT count(*) FROM pg_type WHERE typname = 'ModelVersionStatus'")) == 0
    # And back up again: downgrade left nothing behind that blocks a new upgrade.
    migrate(engine)
    assert current_revision(engine) == head_revision()
    engine.dispose()


def test_postgres_uses_native_enum_and_jsonb(postgres_url: str) -> None:
    engine = create_registry_engine(postgres_url)
    migrate(engine)
    with engine.connect() as conn:
        labels = conn.scalars(
            sa.text(
                "SELECT e.enumlabel FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid "
                "WHERE t.typname = 'ModelVersionStatus' ORDER BY e.enumsortorder"
            )
        ).all()
        metadata_type = conn.scalar(
            sa.text(
                "SELECT data_type FROM information_schema.columns "
                "WHERE table_name = 'PersonalizedModel' AND column_name = 'metadata'"
            )
        )
    assert labels == ["TRAINING", "CANDIDATE", "ACTIVE", "DEPRECATED", "REJECTED"]
    assert metadata_type == "jsonb"
    engine.dispose()


def test_registry_and_dagster_storage_share_a_postgres_database(postgres_url: str) -> None:
    """dagster-postgres keeps its own `alembic_version`; ours must not touch it, nor it ours."""
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    engine = create_registry_engine(postgres_url)
    migrate(engine)
    dagster_url = engine.url.render_as_string(hide_password=False)
    for storage in (PostgresRunStorage, PostgresEventLogStorage, PostgresScheduleStorage):
        storage(dagster_url).dispose()
    with engine.connect() as conn:
        dagster_revision = conn.scalar(sa.text("SELECT version_num FROM alembic_version"))
    assert dagster_revision  # Dagster stamped its own table
    assert current_revision(engine) == head_revision()
    assert migrate(engine) == (head_revision(), head_revision())  # still a no-op
    migrate(engine, "base")
    tables = set(sa.inspect(engine).get_table_names())
    assert {"runs", "event_logs", "alembic_version"} <= tables  # Dagster's storage survived our downgrade
    assert not (REGISTRY_TABLES & tables)
    with engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT version_num FROM alembic_version")) == dagster_revision
    engine.dispose()
