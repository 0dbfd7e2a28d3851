"""Dagster resources: the registry, the model store, and the federated and training settings."""

import json
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import TypeVar

import dagster as dg

from aivo_fl.config import DEFAULT_BASE_MODEL, Settings
from aivo_fl.defs.secrets import database_url_reference, secret_reference
from aivo_fl.ml.runtime import cpu_threads
from aivo_fl.operations.alerts import Alert, Delivery, send_alert
from aivo_fl.operations.faults import crash_point
from aivo_fl.operations.store import ModelStore
from aivo_fl.registry import ModelRegistry
from aivo_fl.registry.app_tables import AppTables

DISABLED_REASON = "Federated learning is disabled: set USE_FEDERATED_LEARNING=true to activate it"


@cache
def _registry_for(database_url: str, app_tables: str) -> ModelRegistry:
    # One engine (and connection pool) per process, URL and table mapping, shared by every step and tick.
    mapping = json.loads(app_tables)
    tables = AppTables.mapped(**mapping) if mapping else AppTables.own()
    return ModelRegistry(database_url, app_tables=tables)


class RegistryResource(dg.ConfigurableResource):
    """The registry database (`DATABASE_URL`) and where the app's learners and interactions are
    read (APP_LEARNER_TABLE, APP_INTERACTION_TABLE and their column mappings; unset: our own)."""

    database_url: str
    app_learner_table: str | None = None
    app_learner_columns: dict[str, str] | None = None
    app_interaction_table: str | None = None
    app_interaction_columns: dict[str, str] | None = None

    def get_registry(self) -> ModelRegistry:
        mapping = {}
        if self.app_learner_table and self.app_interaction_table:
            mapping = {
                "learner_table": self.app_learner_table,
                "interaction_table": self.app_interaction_table,
                "learner_columns": self.app_learner_columns,
                "interaction_columns": self.app_interaction_columns,
            }
        return _registry_for(self.database_url, json.dumps(mapping, sort_keys=True))


class ModelStoreResource(dg.ConfigurableResource):
    """Main model versions and learner models on disk."""

    main_model_path: str
    learner_models_path: str
    # `baseModel` on each learner's "PersonalizedModel" row (AIVO_BASE_MODEL_NAME).
    base_model_name: str = DEFAULT_BASE_MODEL

    def get_store(self) -> ModelStore:
        return ModelStore(main_root=Path(self.main_model_path), learners_root=Path(self.learner_models_path))


class FederatedSettingsResource(dg.ConfigurableResource):
    """The master switch and the server optimizer (from `Settings`). The differential-privacy knobs
    are NOT here: they are the `privacy` resource, which has no run config (:func:`privacy_resource`)."""

    use_federated_learning: bool
    server_optimizer: str
    server_learning_rate: float | None

    def require_enabled(self) -> None:
        if not self.use_federated_learning:
            # Not retried: switching the system on is an operator's decision.
            raise dg.Failure(description=DISABLED_REASON, allow_retries=False)

    def settings(self) -> Settings:
        """These fields as `Settings`, what the operations layer reads (the others keep their defaults)."""
        return Settings.model_construct(**self.model_dump())


PRIVACY_RESOURCE_DESCRIPTION = (
    "The deployment's differential-privacy knobs, from its environment (ENABLE_DIFFERENTIAL_PRIVACY, "
    "NOISE_MULTIPLIER, CLIP_NORM, LEARNER_SAMPLE_RATE, PRIVACY_*): the accountant assumes every round ran "
    "with them, so no run config (launchpad, `dagster job execute`) can change them."
)


def privacy_resource(settings: Settings) -> dg.ResourceDefinition:
    """The privacy knobs as a resource whose config schema is empty: run config giving it any value is
    refused by Dagster's config validation, before the run starts."""
    privacy = settings.privacy()
    return dg.ResourceDefinition(
        resource_fn=lambda _: privacy, config_schema={}, description=PRIVACY_RESOURCE_DESCRIPTION
    )


class TrainingSettingsResource(dg.ConfigurableResource):
    """Main model training, the synthetic curriculum and local training (from `Settings`)."""

    training_epochs: int
    batch_size: int
    curriculum_samples: int
    data_seed: int
    local_epochs: int
    personalization_depth: str
    local_proximal_mu: float
    torch_num_threads: int | None

    def torch_threads(self, instance: dg.DagsterInstance) -> int:
        """`TORCH_NUM_THREADS`, else the allowed CPUs split between the runs this instance may run at once."""
        queue = instance.get_concurrency_config().run_queue_config
        runs = queue.max_concurrent_runs if queue is not None and queue.max_concurrent_runs > 0 else None
        return cpu_threads(self.torch_num_threads, runs)


class AlertsResource(dg.ConfigurableResource):
    """Where alerts go (`ALERT_WEBHOOK_URL`, a secret; unset: none sent) and the UI address for run links."""

    webhook_url: str | None = None
    webserver_url: str = "http://127.0.0.1:3000"
    # "No eligible learners" alerts only after this many aggregation runs in a row ended that way.
    empty_rounds: int = 2

    def run_url(self, run_id: str) -> str:
        return f"{self.webserver_url.rstrip('/')}/runs/{run_id}"

    def send(self, alert: Alert) -> Delivery | None:
        return send_alert(self.webhook_url, alert) if self.webhook_url else None


class ErasureResource(dg.ConfigurableResource):
    """The key of the hash that replaces an erased learner's id (`AIVO_ERASURE_KEY`, a secret)."""

    key: str | None = None

    def require_key(self) -> bytes:
        if not self.key:
            # Not retried: without the key the audit trail cannot be pseudonymized consistently.
            raise dg.Failure(
                description="AIVO_ERASURE_KEY is not set: erasure needs it to replace learner ids by a keyed hash",
                allow_retries=False,
            )
        return self.key.encode()


class ReporterResource(dg.ConfigurableResource):
    """Where progress lines go: always the run's log; with `echo`, also plain stdout (the CLI)."""

    echo: bool = False
    # Aggregation rounds also append their lines here (AGGREGATION_LOG_PATH).
    aggregation_log_path: str = "./logs/aggregation.log"

    def for_context(self, context: dg.OpExecutionContext | dg.AssetExecutionContext) -> Callable[[str], None]:
        def report(line: str) -> None:
            crash_point(line)
            if line:
                context.log.info(line)
            if self.echo:
                print(line, flush=True)

        return report


R = TypeVar("R", bound=dg.ConfigurableResource)


def _from_settings(kind: type[R], settings: Settings, **differing: object) -> R:
    """A settings resource whose fields carry the `Settings` values of the same name, but `differing`."""
    return kind(**{name: getattr(settings, name) for name in kind.model_fields if name not in differing}, **differing)


def build_resources(
    settings: Settings, *, echo: bool = False
) -> dict[str, dg.ConfigurableResource | dg.ResourceDefinition]:
    return {
        # The UI and run storage see the variable's name, never the password.
        "registry": RegistryResource(
            database_url=database_url_reference(settings),
            app_learner_table=settings.app_learner_table,
            app_learner_columns=settings.app_learner_columns,
            app_interaction_table=settings.app_interaction_table,
            app_interaction_columns=settings.app_interaction_columns,
        ),
        "model_store": ModelStoreResource(
            main_model_path=str(settings.main_model_path),
            learner_models_path=str(settings.learner_models_path),
            base_model_name=settings.base_model_name,
        ),
        "federated_settings": _from_settings(FederatedSettingsResource, settings),
        "privacy": privacy_resource(settings),
        "training_settings": _from_settings(TrainingSettingsResource, settings),
        "alerts": AlertsResource(
            webhook_url=secret_reference("ALERT_WEBHOOK_URL", settings.alert_webhook_url),
            webserver_url=settings.dagster_webserver_url,
            empty_rounds=settings.alert_after_empty_rounds,
        ),
        "erasure": ErasureResource(key=secret_reference("AIVO_ERASURE_KEY", settings.erasure_key)),
        "reporter": ReporterResource(echo=echo, aggregation_log_path=str(settings.aggregation_log_path)),
    }
