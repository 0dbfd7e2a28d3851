"""Dagster resources: the registry, the model store, and the federated and training settings."""

import os
from collections.abc import Callable
from functools import cache
from pathlib import Path

import dagster as dg

from aivo_fl.config import Settings
from aivo_fl.ml.federated_round import PrivacySettings
from aivo_fl.operations.aggregation import privacy_settings_from
from aivo_fl.operations.store import ModelStore
from aivo_fl.registry import ModelRegistry

DISABLED_REASON = "Federated learning is disabled: set USE_FEDERATED_LEARNING=true to activate it"


@cache
def _registry_for(database_url: str) -> ModelRegistry:
    # One engine (and connection pool) per process and URL, shared by every step and sensor tick.
    return ModelRegistry(database_url)


class RegistryResource(dg.ConfigurableResource):
    """The registry database (`DATABASE_URL`)."""

    database_url: str

    def get_registry(self) -> ModelRegistry:
        return _registry_for(self.database_url)


class ModelStoreResource(dg.ConfigurableResource):
    """Main model versions and learner models on disk."""

    main_model_path: str
    learner_models_path: str

    def get_store(self) -> ModelStore:
        return ModelStore(main_root=Path(self.main_model_path), learners_root=Path(self.learner_models_path))


class FederatedSettingsResource(dg.ConfigurableResource):
    """The master switch and the differential-privacy knobs."""

    use_federated_learning: bool = False
    enable_differential_privacy: bool = True
    noise_multiplier: float = 0.1
    clip_norm: float = 1.0
    privacy_delta: float = 1e-5
    privacy_epsilon_budget: float | None = None
    privacy_learner_epsilon_budget: float | None = None

    def require_enabled(self) -> None:
        if not self.use_federated_learning:
            # Not retried: switching the system on is an operator's decision.
            raise dg.Failure(description=DISABLED_REASON, allow_retries=False)

    def privacy(self) -> PrivacySettings:
        return privacy_settings_from(self)


class TrainingSettingsResource(dg.ConfigurableResource):
    """Main model training and the synthetic curriculum."""

    training_epochs: int = 100
    batch_size: int = 64
    curriculum_samples: int = 10_000
    data_seed: int = 0
    local_epochs: int = 5
    personalization_depth: str = "heads"
    local_proximal_mu: float = 0.1


class ReporterResource(dg.ConfigurableResource):
    """Where progress lines go: always the run's log; with `echo`, also plain stdout (the CLI)."""

    echo: bool = False

    def for_context(self, context: dg.OpExecutionContext | dg.AssetExecutionContext) -> Callable[[str], None]:
        def report(line: str) -> None:
            if line:
                context.log.info(line)
            if self.echo:
                print(line, flush=True)

        return report


def build_resources(
    settings: Settings, *, echo: bool = False, database_url_from_env: bool = False
) -> dict[str, dg.ConfigurableResource]:
    # With `database_url_from_env` (the UI's code location) DATABASE_URL goes through Dagster's
    # EnvVar, so the UI shows the variable's name and never the password.
    database_url: str | dg.EnvVar = settings.database_url
    if database_url_from_env and "DATABASE_URL" in os.environ:
        database_url = dg.EnvVar("DATABASE_URL")
    return {
        "registry": RegistryResource(database_url=database_url),
        "model_store": ModelStoreResource(
            main_model_path=str(settings.main_model_path), learner_models_path=str(settings.learner_models_path)
        ),
        "federated_settings": FederatedSettingsResource(
            use_federated_learning=settings.use_federated_learning,
            enable_differential_privacy=settings.enable_differential_privacy,
            noise_multiplier=settings.noise_multiplier,
            clip_norm=settings.clip_norm,
            privacy_delta=settings.privacy_delta,
            privacy_epsilon_budget=settings.privacy_epsilon_budget,
            privacy_learner_epsilon_budget=settings.privacy_learner_epsilon_budget,
        ),
        "training_settings": TrainingSettingsResource(
            training_epochs=settings.training_epochs,
            batch_size=settings.batch_size,
            curriculum_samples=settings.curriculum_samples,
            data_seed=settings.data_seed,
            personalization_depth=settings.personalization_depth,
            local_proximal_mu=settings.local_proximal_mu,
        ),
        "reporter": ReporterResource(echo=echo),
    }
