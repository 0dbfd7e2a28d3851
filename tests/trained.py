"""Trained state built once per test session and handed to each test as its own copy.

`TrainedMain`: a main version really trained (`train_and_register_main_model`, 5,000 curriculum
samples, 40 epochs), whose files are copied into a test's model store and registered in the test's
registry by the registry's own call, instead of every test training one.

`Snapshot`: a registry and model store built once (a trained cohort, say) in a fixed `live`
folder, then copied aside. `restored()` puts the copy back in that folder and opens a database of
its own with the same rows: a copy of the SQLite file, or on PostgreSQL `CREATE DATABASE ...
TEMPLATE`. The rows record absolute paths into `live`, so the folder stays put; the tests of one
process run one at a time (xdist workers are processes, each with its own snapshots).
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from _pytest.outcomes import OutcomeException

from aivo_fl.ml.training.main_model import TrainingConfig
from aivo_fl.operations.main_model import build_curriculum_dataset, train_and_register_main_model
from aivo_fl.operations.store import ModelStore
from aivo_fl.registry import MainVersionRecord, ModelRegistry, migrate
from tests.postgres import postgres_database

MAIN_SAMPLES = 5000
MAIN_EPOCHS = 40
SQLITE_FILE = "registry.db"


def quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class TrainedMain:
    store: ModelStore
    record: MainVersionRecord

    @property
    def dataset(self) -> Path:
        return Path(self.record.metrics["curriculumPath"])

    def install(self, registry: ModelRegistry, store: ModelStore) -> MainVersionRecord:
        """Version 1.0.0 and its curriculum dataset copied into `store`, registered active in `registry`."""
        version = self.record.version
        folder = shutil.copytree(self.store.main_root / version, store.main_root / version)
        dataset = store.datasets_root / self.dataset.name
        dataset.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.dataset, dataset)
        metrics = {**self.record.metrics, "curriculumPath": str(dataset)}
        return registry.register_main_version(version, str(folder), metrics)


def train_main(root: Path) -> TrainedMain:
    store = ModelStore(root / "models" / "main-aivo", root / "models" / "learners")
    registry = ModelRegistry(f"sqlite:///{root / SQLITE_FILE}")
    migrate(registry.engine)
    try:
        dataset = build_curriculum_dataset(store, MAIN_SAMPLES, 0, report=quiet)
        train_and_register_main_model(registry, store, dataset.path, TrainingConfig(epochs=MAIN_EPOCHS), report=quiet)
        record = registry.get_active_version()
    finally:
        registry.engine.dispose()
    assert record is not None
    return TrainedMain(store, record)


@dataclass
class Snapshot:
    backend: str
    live: Path
    pristine: Path
    value: Any  # what the build returned (the cohort's learner ids, ...)
    template: str | None = None  # PostgreSQL: the database each restore copies

    @contextmanager
    def restored(self) -> Iterator[str]:
        """The store back in `live` as built; the URL of a fresh database holding the built rows."""
        shutil.rmtree(self.live, ignore_errors=True)
        shutil.copytree(self.pristine, self.live, symlinks=True)
        if self.template is None:
            yield f"sqlite:///{self.live / SQLITE_FILE}"
            return
        with postgres_database(template=self.template) as url:
            yield url


Build = Callable[[ModelRegistry, Path], Any]


@dataclass
class Snapshots:
    """Snapshots by name and backend, each built on first use; PostgreSQL templates dropped at the end."""

    root: Path
    built: dict[tuple[str, str], Snapshot] = field(default_factory=dict)
    refused: dict[tuple[str, str], OutcomeException] = field(default_factory=dict)
    templates: ExitStack = field(default_factory=ExitStack)

    def get(self, name: str, backend: str, build: Build) -> Snapshot:
        key = (name, backend)
        if key in self.refused:  # PostgreSQL unreachable: skip (or fail in CI) at once, as the first did
            raise self.refused[key]
        if key not in self.built:
            try:
                self.built[key] = self._build(name, backend, build)
            except OutcomeException as exc:
                self.refused[key] = exc
                raise
        return self.built[key]

    def _build(self, name: str, backend: str, build: Build) -> Snapshot:
        folder = self.root / f"{name}-{backend}-{uuid.uuid4().hex[:8]}"
        live, pristine = folder / "live", folder / "pristine"
        live.mkdir(parents=True)
        if backend == "sqlite":
            template, url = None, f"sqlite:///{live / SQLITE_FILE}"
        else:
            url = self.templates.enter_context(postgres_database())
            template = sa.engine.make_url(url).database
        registry = ModelRegistry(url)
        try:
            migrate(registry.engine)
            value = build(registry, live)
        finally:
            registry.engine.dispose()  # a template has no open connection when it is copied
        shutil.copytree(live, pristine, symlinks=True)
        return Snapshot(backend, live, pristine, value, template)

    def close(self) -> None:
        self.templates.close()
