"""Engines, connection errors and migrations for the registry database."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL, Engine

from aivo_fl.config import normalize_database_url
from aivo_fl.registry.errors import DatabaseUnavailable
from aivo_fl.registry.schema import ALEMBIC_VERSION_TABLE

if TYPE_CHECKING:
    from aivo_fl.registry.app_tables import AppTables

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def describe_target(url: URL) -> str:
    if url.get_backend_name() == "sqlite":
        return f"SQLite file {url.database}"
    port = f":{url.port}" if url.port else ""
    return f"PostgreSQL at {url.host or 'localhost'}{port}/{url.database or ''}"


def unavailable(url: URL, exc: BaseException) -> DatabaseUnavailable:
    # Only the first line of the driver's message: it never contains the password, the URL might.
    reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return DatabaseUnavailable(f"Can't reach database: {describe_target(url)} ({reason})")


def create_registry_engine(database_url: str | URL) -> Engine:
    url = normalize_database_url(
        str(database_url) if isinstance(database_url, str) else database_url.render_as_string(hide_password=False)
    )
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30})
        _sqlite_serializable_writes(engine)
        return engine
    return sa.create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 5, "application_name": "aivo-fl"})


def _sqlite_serializable_writes(engine: Engine) -> None:
    """Make every SQLite transaction take the write lock up front (BEGIN IMMEDIATE).

    pysqlite's own implicit transactions start late and let two writers both read the old state,
    which would let two racing promotions each believe they won.
    """

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None
        dbapi_connection.execute("PRAGMA foreign_keys = ON")

    @sa.event.listens_for(engine, "begin")
    def _begin(connection):  # type: ignore[no-untyped-def]
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def alembic_config(connection: sa.Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn, opts={"version_table": ALEMBIC_VERSION_TABLE}).get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def migrate(
    engine: Engine, revision: str = "head", app_tables: AppTables | None = None
) -> tuple[str | None, str | None]:
    """Upgrade (or downgrade, for an older revision or `base`) and return (before, after).

    With the app's learner and interaction tables mapped (`app_tables`), they are checked first
    and aivo-fl's own stand-ins are not created."""
    before = current_revision(engine)
    with engine.begin() as conn:
        if app_tables is not None:
            app_tables.verify(conn)
        config = alembic_config(conn)
        config.attributes["app_owned_tables"] = app_tables is not None and app_tables.app_owned
        script = ScriptDirectory.from_config(config)
        target = script.get_current_head() if revision == "head" else revision
        if target == "base" or (before is not None and _is_ancestor(script, target, before)):
            command.downgrade(config, revision)
            if target == "base":  # leave the database exactly as it was before the first upgrade
                sa.Table(ALEMBIC_VERSION_TABLE, sa.MetaData()).drop(conn, checkfirst=True)
        else:
            command.upgrade(config, revision)
    return before, current_revision(engine)


def _is_ancestor(script: ScriptDirectory, maybe_older: str | None, revision: str) -> bool:
    if maybe_older is None or maybe_older == revision:
        return False
    return any(rev.revision == maybe_older for rev in script.iterate_revisions(revision, "base"))
