"""deploy/dagster.yaml really stores Dagster's runs in PostgreSQL, next to the registry."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from aivo_fl.registry import create_registry_engine, migrate
from aivo_fl.registry.database import current_revision, head_revision

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


@dg.op
def hello() -> int:
    return 1


@dg.job
def smoke() -> None:
    hello()


def test_production_instance_runs_on_postgres_beside_the_registry(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = sa.engine.make_url(postgres_url)
    for name, value in {
        "DAGSTER_PG_HOST": url.host or "127.0.0.1",
        "DAGSTER_PG_PORT": str(url.port or 5432),
        "DAGSTER_PG_USER": url.username or "postgres",
        "DAGSTER_PG_PASSWORD": url.password or "",
        "DAGSTER_PG_DB": url.database or "",
    }.items():
        monkeypatch.setenv(name, value)
    shutil.copy(DEPLOY / "dagster.yaml", tmp_path / "dagster.yaml")
    engine = create_registry_engine(postgres_url)
    migrate(engine)
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert smoke.execute_in_process(instance=instance).success
        assert [r.job_name for r in instance.get_runs()] == ["smoke"]
    assert current_revision(engine) == head_revision()  # Dagster's migrations left ours alone
    with engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT count(*) FROM runs")) == 1
    engine.dispose()


def test_local_instance_config_is_valid(tmp_path: Path) -> None:
    shutil.copy(DEPLOY / "dagster.local.yaml", tmp_path / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert smoke.execute_in_process(instance=instance).success
