"""Shared fixtures: a fresh registry on SQLite and on a real PostgreSQL (tests/postgres.py), a main
version trained once per session and snapshots restored per test (tests/trained.py), and the
fixtures that keep every test away from the working tree's `.env`, `models/`, `logs/` and
`.dagster_home/`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import absl.logging
import pytest

from aivo_fl.config import Settings
from aivo_fl.registry import ModelRegistry, migrate
from tests.postgres import admin_engine, postgres_database, postgres_or_skip
from tests.trained import Snapshots, TrainedMain, train_main

# Every variable a setting reads (its alias), so a developer's shell cannot steer a test.
CONFIG_VARIABLES = tuple(sorted(field.alias for field in Settings.model_fields.values() if field.alias))

# absl (dp-accounting's logging) binds its handler to the sys.stderr of the moment it is imported, here
# pytest's capture. A Dagster instance's logging.config.dictConfig closes every handler, and absl's
# close() closes that stream unless it is the sys.stderr of that moment, which a captured test changes.
# The process's own stderr is one absl never closes.
absl.logging.get_absl_handler().python_handler.setStream(sys.__stderr__)

# Kept under their old names: tests import them from here.
_admin_engine = admin_engine
_postgres_or_skip = postgres_or_skip


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """URL of a brand-new, empty PostgreSQL database."""
    with postgres_database() as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'registry.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    """Each registry backend in turn (the test ids say which)."""
    return request.param


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest) -> str:
    """An empty database on each backend."""
    return request.getfixturevalue(f"{backend}_url")


@pytest.fixture(scope="session")
def trained_main(tmp_path_factory: pytest.TempPathFactory) -> TrainedMain:
    """Main version 1.0.0, trained once (5,000 samples, 40 epochs): `trained_main.install(registry, store)`."""
    return train_main(tmp_path_factory.mktemp("trained-main"))


@pytest.fixture(scope="session")
def snapshots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Snapshots]:
    """Registries and stores built once per session, restored per test (tests/trained.py)."""
    built = Snapshots(tmp_path_factory.mktemp("snapshots"))
    yield built
    built.close()


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


def _away_from_the_working_tree(patch: pytest.MonkeyPatch, folder: Path) -> None:
    """Run from an empty folder with no setting in the environment: the settings' `.env`, the default
    `./models/` store and registry, `./logs/` and the Makefile's `DAGSTER_HOME=./.dagster_home` all
    resolve inside `folder`, never to what a developer's shell or `make demo` left in the working tree."""
    patch.chdir(folder)
    for name in CONFIG_VARIABLES:
        patch.delenv(name, raising=False)
    patch.setenv("DAGSTER_HOME", str(folder / "dagster_home"))


@pytest.fixture(scope="session", autouse=True)
def _hermetic_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The same for session- and module-scoped fixtures, which are set up before any test's own folder."""
    with pytest.MonkeyPatch.context() as patch:
        _away_from_the_working_tree(patch, tmp_path_factory.mktemp("session-cwd"))
        yield


@pytest.fixture(autouse=True)
def _hermetic(_environment_restored: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test runs in its own `tmp_path` (a `.env` a test writes there is the one it reads)."""
    _away_from_the_working_tree(monkeypatch, tmp_path)
