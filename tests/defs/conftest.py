"""A real temporary Dagster instance and definitions bound to a scratch registry and model store."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

from aivo_fl.config import Settings
from aivo_fl.definitions import build_definitions
from aivo_fl.operations.store import ModelStore
from aivo_fl.registry import ModelRegistry, migrate
from tests.trained import TrainedMain

# For tests of Dagster's wiring (jobs, checks, sensors' run history, alerts, schedules): the SQL they
# run is tested on both backends in tests/registry, tests/operations and the end-to-end cycle.
SQLITE_ONLY = pytest.mark.parametrize("backend", ["sqlite"])


@dataclass
class Deployment:
    settings: Settings
    defs: dg.Definitions
    instance: dg.DagsterInstance
    registry: ModelRegistry
    store: ModelStore

    def run(self, job: str, **kwargs: object) -> dg.ExecuteInProcessResult:
        return self.defs.resolve_job_def(job).execute_in_process(instance=self.instance, raise_on_error=False, **kwargs)

    def with_settings(self, **overrides: object) -> Deployment:
        settings = self.settings.model_copy(update=overrides)
        return Deployment(settings, build_definitions(settings), self.instance, self.registry, self.store)

    def with_main_version(self, trained: TrainedMain) -> Deployment:
        """The session's trained main version installed as 1.0.0, as a `train_main_model` run would leave it."""
        trained.install(self.registry, self.store)
        # The training job also materializes the active version's asset, so the UI names 1.0.0.
        job = self.defs.resolve_implicit_global_asset_job_def()
        result = job.execute_in_process(
            instance=self.instance, asset_selection=[dg.AssetKey("active_main_version")], raise_on_error=True
        )
        assert result.success
        return self


def make_settings(tmp_path: Path, database_url: str, **overrides: object) -> Settings:
    fields: dict[str, object] = {
        "use_federated_learning": True,
        "database_url": database_url,
        "main_model_path": tmp_path / "models" / "main-aivo",
        "learner_models_path": tmp_path / "models" / "learners",
        "aggregation_log_path": tmp_path / "logs" / "aggregation.log",
        "training_epochs": 40,
        "curriculum_samples": 5000,
    }
    fields.update(overrides)
    return Settings(**fields)  # type: ignore[arg-type]


@pytest.fixture
def deployment(tmp_path: Path, database_url: str) -> Iterator[Deployment]:
    settings = make_settings(tmp_path, database_url)
    registry = ModelRegistry(settings.database_url)
    migrate(registry.engine)
    with dg.instance_for_test() as instance:
        yield Deployment(settings, build_definitions(settings), instance, registry, ModelStore.from_settings(settings))
    registry.engine.dispose()


def ids_in_bucket(bucket: int, count: int, prefix: str = "learner") -> list[str]:
    """`count` learner ids that fall in `bucket` (found by trying, since the bucket is a hash)."""
    from aivo_fl.ml.store.learner_buckets import bucket_of

    found: list[str] = []
    i = 0
    while len(found) < count:
        candidate = f"{prefix}-{i:06d}"
        if bucket_of(candidate) == bucket:
            found.append(candidate)
        i += 1
    return found
