"""Per-learner assets: the personalized clone and its local training, one partition per learner.

Both use a single-run backfill policy: a sensor tick that finds many learners asks for one run
over a range of partitions instead of one run per learner.
"""

from statistics import fmean

import dagster as dg

from aivo_fl.defs.assets.main_model import main_model
from aivo_fl.defs.partitions import TRANSIENT_RETRY, learner_partitions
from aivo_fl.defs.resources import (
    FederatedSettingsResource,
    ModelStoreResource,
    RegistryResource,
    ReporterResource,
    TrainingSettingsResource,
)
from aivo_fl.ml.learner_ids import InvalidLearnerId
from aivo_fl.operations.learners import clone_learner, train_learner_locally
from aivo_fl.registry import RegistryError


def _fail_if_any(failures: dict[str, str], done: int, what: str) -> None:
    """Finish the whole batch first, then fail naming each learner that could not be handled."""
    if failures:
        listed = "; ".join(f"{learner}: {reason}" for learner, reason in sorted(failures.items())[:20])
        raise dg.Failure(
            description=f"{what} failed for {len(failures)} learner(s) ({done} succeeded): {listed}",
            metadata={"failed": dg.MetadataValue.json(failures), "succeeded": done},
            allow_retries=False,
        )


@dg.asset(
    group_name="learners",
    partitions_def=learner_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=[main_model],
    kinds={"pytorch"},
    retry_policy=TRANSIENT_RETRY,
)
def learner_models(
    context: dg.AssetExecutionContext,
    registry: RegistryResource,
    model_store: ModelStoreResource,
    federated_settings: FederatedSettingsResource,
    reporter: ReporterResource,
) -> dg.MaterializeResult:
    """Each learner's personalized clone of the active main version: frozen trunk, own heads."""
    federated_settings.require_enabled()
    reg, store, report = registry.get_registry(), model_store.get_store(), reporter.for_context(context)
    cloned, failures, sizes, version = 0, {}, [], None
    for learner_id in context.partition_keys:
        try:
            clone = clone_learner(reg, store, learner_id)
        except (InvalidLearnerId, RegistryError) as exc:
            failures[learner_id] = str(exc)
            continue
        cloned += 1
        sizes.append(clone.bytes_on_disk)
        version = clone.source_version
    report(f"✓ Cloned {cloned} learner model(s) from main version {version}")
    _fail_if_any(failures, cloned, "Cloning")
    return dg.MaterializeResult(
        metadata={
            "learners": cloned,
            "source_version": version or "-",
            "bytes_per_learner": fmean(sizes) if sizes else 0.0,
        }
    )


@dg.asset(
    group_name="learners",
    partitions_def=learner_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=[learner_models],
    kinds={"pytorch"},
    retry_policy=TRANSIENT_RETRY,
)
def learner_training(
    context: dg.AssetExecutionContext,
    registry: RegistryResource,
    model_store: ModelStoreResource,
    federated_settings: FederatedSettingsResource,
    training_settings: TrainingSettingsResource,
    reporter: ReporterResource,
) -> dg.MaterializeResult:
    """Local training of each learner's heads on their own interactions; one session row per run."""
    federated_settings.require_enabled()
    reg, store, report = registry.get_registry(), model_store.get_store(), reporter.for_context(context)
    outcomes, failures = [], {}
    for learner_id in context.partition_keys:
        try:
            outcomes.append(train_learner_locally(
                    reg,
                    store,
                    learner_id,
                    epochs=training_settings.local_epochs,
                    proximal_mu=training_settings.local_proximal_mu,
                ).result)
        except (InvalidLearnerId, RegistryError) as exc:
            failures[learner_id] = str(exc)
    rebased = sum(1 for o in outcomes if o.rebased_from is not None)
    if outcomes:
        report(
            f"✓ Trained {len(outcomes)} learner model(s) ({rebased} rebased onto the active version); "
            f"held-out accuracy {fmean(o.accuracy_before for o in outcomes):.2%} -> "
            f"{fmean(o.accuracy_after for o in outcomes):.2%}"
        )
    _fail_if_any(failures, len(outcomes), "Local training")
    return dg.MaterializeResult(
        metadata={
            "learners": len(outcomes),
            "rebased": rebased,
            "mean_accuracy_before": fmean(o.accuracy_before for o in outcomes) if outcomes else 0.0,
            "mean_accuracy_after": fmean(o.accuracy_after for o in outcomes) if outcomes else 0.0,
            "mean_delta_norm": fmean(o.delta_norm for o in outcomes) if outcomes else 0.0,
            "samples": sum(o.samples for o in outcomes),
        }
    )


defs = dg.Definitions(assets=[learner_models, learner_training])
