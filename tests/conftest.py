"""Shared fixtures: a fresh registry on SQLite and on a real PostgreSQL.

PostgreSQL comes from AIVO_TEST_POSTGRES_URL (default: this machine's trust-auth server). Each
test gets its own database, dropped afterwards. Locally without a server those tests skip; in CI
(CI=true) an unreachable server fails them, so PostgreSQL coverage can never silently vanish.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from aivo_fl.registry import ModelRegistry, migrate

POSTGRES_ADMIN_URL = os.environ.get("AIVO_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _admin_engine() -> sa.Engine:
    from aivo_fl.config import normalize_database_url

    return sa.create_engine(
        normalize_database_url(POSTGRES_ADMIN_URL), isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3}
    )


def _postgres_or_skip() -> sa.Engine:
    engine = _admin_engine()
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        message = f"PostgreSQL not reachable at {engine.url.render_as_string(hide_password=True)}: {exc.orig}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return engine


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """URL (operator's bare `postgresql://` form) of a brand-new, empty database."""
    admin = _postgres_or_skip()
    name = f"aivo_fl_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(POSTGRES_ADMIN_URL).set(database=name, drivername="postgresql")
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'registry.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """An empty database on each backend."""
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def registry(database_url: str) -> Iterator[ModelRegistry]:
    """A migrated, empty registry on each backend."""
    reg = ModelRegistry(database_url)
    migrate(reg.engine)
    yield reg
    reg.engine.dispose()


@pytest.fixture(autouse=True)
def _environment_restored() -> Iterator[None]:
    """Binding a secret given as an override exports it to os.environ (aivo_fl/defs/secrets.py, so
    its EnvVar resolves); restore the environment so no test sees another's secrets."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
