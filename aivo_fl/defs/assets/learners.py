"""Per-learner assets: the personalized clone and its local training, one partition per learner.

Both use a single-run backfill policy: a sensor tick that finds many learners asks for one run
over a range of partitions instead of one run per learner.
"""

from collections.abc import Callable, Sequence
from functools import partial
from statistics import fmean
from typing import TypeVar

import dagster as dg

from aivo_fl.defs.assets.main_model import main_model
from aivo_fl.defs.partitions import learner_partitions
from aivo_fl.defs.readable import percent, rounded
from aivo_fl.defs.resources import (
    FederatedSettingsResource,
    ModelStoreResource,
    RegistryResource,
    ReporterResource,
    TrainingSettingsResource,
)
from aivo_fl.defs.retries import TRANSIENT_RETRY, fail_fast_unless_transient
from aivo_fl.ml.artifacts import ArtifactError
from aivo_fl.ml.learner_ids import InvalidLearnerId
from aivo_fl.operations.errors import diagnose
from aivo_fl.operations.learners import clone_learners, train_learner_locally
from aivo_fl.operations.recovery import clean_store
from aivo_fl.registry import RegistryError

# One learner's bad file or refused row fails that learner, not the batch.
PER_LEARNER_ERRORS = (InvalidLearnerId, RegistryError, ArtifactError, OSError)
T = TypeVar("T")
# What both per-learner assets share: a partition per learner, one run per range of partitions.
_learner_asset = partial(
    dg.asset,
    group_name="learners",
    partitions_def=learner_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    kinds={"pytorch"},
    retry_policy=TRANSIENT_RETRY,
)


def _fail_if_any(failures: dict[str, str], done: int, what: str) -> None:
    """Finish the whole batch first, then fail naming each learner that could not be handled."""
    if failures:
        listed = "; ".join(f"{learner}: {reason}" for learner, reason in sorted(failures.items())[:20])
        raise dg.Failure(
            description=f"{what} failed for {len(failures)} learner(s) ({done} succeeded): {listed}",
            metadata={"failed": dg.MetadataValue.json(failures), "succeeded": done},
            allow_retries=False,
        )


def _for_each_learner(keys: Sequence[str], work: Callable[[str], T]) -> tuple[list[T], dict[str, str]]:
    """Run `work` per learner: a learner's own error fails that learner; anything else fails the run
    (retried only when transient)."""
    done, failures = [], {}
    with fail_fast_unless_transient():
        for learner_id in keys:
            try:
                done.append(work(learner_id))
            except PER_LEARNER_ERRORS as exc:
                failures[learner_id] = diagnose(exc).line
    return done, failures


@_learner_asset(deps=[main_model])
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
    clean_store(store, report)
    report(f"Cloning {len(context.partition_keys)} learner model(s)...")
    with fail_fast_unless_transient():
        batch = clone_learners(reg, store, context.partition_keys, base_model=model_store.base_model_name)
    version = batch.clones[-1].source_version if batch.clones else None
    report(f"✓ Cloned {len(batch.clones)} learner model(s) from main version {version}")
    _fail_if_any(batch.failures, len(batch.clones), "Cloning")
    return dg.MaterializeResult(
        metadata={
            "learners": len(batch.clones),
            "source_version": version or "-",
            "bytes_per_learner": round(fmean(c.bytes_on_disk for c in batch.clones)) if batch.clones else 0,
        }
    )


@_learner_asset(deps=[learner_models])
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
    threads = training_settings.torch_threads(context.instance)
    trained, failures = _for_each_learner(
        context.partition_keys,
        lambda learner: train_learner_locally(
            reg,
            store,
            learner,
            epochs=training_settings.local_epochs,
            proximal_mu=training_settings.local_proximal_mu,
            num_threads=threads,
        ),
    )
    outcomes = [t.result for t in trained]
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
            "mean_accuracy_before_pct": percent(fmean(o.accuracy_before for o in outcomes)) if outcomes else 0.0,
            "mean_accuracy_after_pct": percent(fmean(o.accuracy_after for o in outcomes)) if outcomes else 0.0,
            "mean_delta_norm": rounded(fmean(o.delta_norm for o in outcomes)) if outcomes else 0.0,
            "samples": sum(o.samples for o in outcomes),
        }
    )
