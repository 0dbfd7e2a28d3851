"""Per-learner assets, partitioned by learner bucket: the personalized clones and their local training.

A run covers a range of buckets (single-run backfill policy) and handles every learner of those
buckets that needs it. Each bucket gets one materialization whose metadata counts what was done
and lists the failures with their reasons; per-learner status and lineage are the registry's.
One learner's failure fails only that learner: the others are handled, every bucket is
materialized, and then the run fails naming them.
"""

import warnings
from collections.abc import Callable, Iterator, Mapping
from statistics import fmean
from typing import Any, TypeVar

import dagster as dg

from aivo_fl.defs.assets.main_model import main_model
from aivo_fl.defs.partitions import bucket_numbers, learner_buckets
from aivo_fl.defs.readable import percent, rounded
from aivo_fl.defs.resources import (
    FederatedSettingsResource,
    ModelStoreResource,
    RegistryResource,
    ReporterResource,
    TrainingSettingsResource,
)
from aivo_fl.defs.retries import TRANSIENT_RETRY, fail_fast_unless_transient
from aivo_fl.ml.interactions import ROW_PROBLEMS, add_counts, describe_skipped
from aivo_fl.ml.store.cloning import CloneInfo
from aivo_fl.ml.store.learner_buckets import bucket_index, bucket_of, group_by_bucket
from aivo_fl.operations.cohorts import Selection, needing_model, ready_to_train
from aivo_fl.operations.errors import diagnose
from aivo_fl.operations.learners import (
    LearnerTrainingOutcome,
    TrainedBatch,
    clone_learners,
    train_learners_locally,
)
from aivo_fl.operations.recovery import clean_store

# Failures listed by name: per bucket in its metadata, per run in its failure (all are counted).
MAX_LISTED = 20
T = TypeVar("T")
# Dagster marks `backfill_policy` as beta and warns each time a process defines an asset with it:
# every run worker and code server, so `dagster dev` printed it hundreds of times. Only that one
# warning is silenced, only while the two learner assets are defined.
BACKFILL_POLICY_BETA = r"Parameter `backfill_policy` of function `asset` is currently in beta"


def _learner_asset(**kwargs: Any) -> Callable[[Callable[..., Any]], dg.AssetsDefinition]:
    """What both per-learner assets share: a partition per bucket, one run per range of buckets, and
    materializations yielded per bucket (so a run that then fails still records what it did)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=BACKFILL_POLICY_BETA, category=dg.BetaWarning)
        return dg.asset(
            group_name="learners",
            partitions_def=learner_buckets,
            backfill_policy=dg.BackfillPolicy.single_run(),
            kinds={"pytorch"},
            retry_policy=TRANSIENT_RETRY,
            output_required=False,
            **kwargs,
        )


def _fail_if_any(failures: dict[str, str], done: int, what: str) -> None:
    """Finish the whole batch first, then fail naming each learner that could not be handled."""
    if failures:
        listed = sorted(failures.items())[:MAX_LISTED]
        more = f"; and {len(failures) - len(listed)} more" if len(failures) > len(listed) else ""
        raise dg.Failure(
            description=f"{what} failed for {len(failures)} learner(s) ({done} succeeded): "
            + "; ".join(f"{learner}: {reason}" for learner, reason in listed)
            + more,
            metadata={"failed": dg.MetadataValue.json(dict(sorted(failures.items())[:100])), "succeeded": done},
            allow_retries=False,
        )


def _bucket_materializations(
    context: dg.AssetExecutionContext,
    verb: str,
    done: Mapping[str, T],
    failures: Mapping[str, str],
    describe: Callable[[list[T]], dict[str, Any]],
    per_bucket: Mapping[int, dict[str, Any]] | None = None,
) -> Iterator[dg.AssetMaterialization]:
    """One materialization per bucket of the run: `verb` (cloned, trained), failed, the failures
    with their reasons (the first MAX_LISTED), what `describe` makes of the bucket's results, and
    the bucket's entry of `per_bucket`."""
    done_in, failed_in = group_by_bucket(done), group_by_bucket(failures)
    for key in context.partition_keys:
        bucket = bucket_index(key)
        results = [done[learner] for learner in done_in.get(bucket, [])]
        failed = sorted(failed_in.get(bucket, []))
        metadata = {
            verb: len(results),
            "failed": len(failed),
            "failures": dg.MetadataValue.json({learner: failures[learner] for learner in failed[:MAX_LISTED]}),
            **describe(results),
            **(per_bucket or {}).get(bucket, {}),
        }
        yield dg.AssetMaterialization(asset_key=context.asset_key, partition=key, metadata=metadata)


def _report_refused(context: dg.AssetExecutionContext, selection: Selection) -> None:
    # Ids the app wrote that could escape the model store are never handled; saying so is enough.
    for reason in list(selection.refused.values())[:10]:
        context.log.warning(f"Not handled: {reason}")


def _versions(versions: set[str]) -> str:
    return ", ".join(sorted(versions)) or "-"


def _clone_metadata(clones: list[CloneInfo]) -> dict[str, Any]:
    return {
        "source_version": _versions({c.source_version for c in clones}),
        "bytes_per_learner": round(fmean(c.bytes_on_disk for c in clones)) if clones else 0,
    }


@_learner_asset(deps=[main_model])
def learner_models(
    context: dg.AssetExecutionContext,
    registry: RegistryResource,
    model_store: ModelStoreResource,
    federated_settings: FederatedSettingsResource,
    reporter: ReporterResource,
) -> Iterator[dg.AssetMaterialization]:
    """Every learner of the run's buckets with a completed baseline and no model gets a personalized
    clone of the active main version (frozen trunk, own heads) and a `"PersonalizedModel"` row."""
    federated_settings.require_enabled()
    reg, store, report = registry.get_registry(), model_store.get_store(), reporter.for_context(context)
    clean_store(store, report)
    with fail_fast_unless_transient():
        selection = needing_model(reg, bucket_numbers(context.partition_keys))
        report(f"Cloning {len(selection.learners)} learner model(s) in {len(context.partition_keys)} bucket(s)...")
        batch = clone_learners(reg, store, selection.learners, base_model=model_store.base_model_name)
    _report_refused(context, selection)
    clones = {clone.learner_id: clone for clone in batch.clones}
    version = _versions({c.source_version for c in batch.clones})
    report(f"✓ Cloned {len(clones)} learner model(s) from main version {version}")
    yield from _bucket_materializations(context, "cloned", clones, batch.failures, _clone_metadata)
    _fail_if_any(batch.failures, len(clones), "Cloning")


def _training_metadata(trained: list[LearnerTrainingOutcome]) -> dict[str, Any]:
    outcomes = [t.result for t in trained]
    return {
        "source_version": _versions({o.source_version for o in outcomes}),
        "rebased": sum(1 for o in outcomes if o.rebased_from is not None),
        "mean_accuracy_before_pct": percent(fmean(o.accuracy_before for o in outcomes)) if outcomes else 0.0,
        "mean_accuracy_after_pct": percent(fmean(o.accuracy_after for o in outcomes)) if outcomes else 0.0,
        "mean_delta_norm": rounded(fmean(o.delta_norm for o in outcomes)) if outcomes else 0.0,
        "samples": sum(o.samples for o in outcomes),
    }


@_learner_asset(deps=[learner_models])
def learner_training(
    context: dg.AssetExecutionContext,
    registry: RegistryResource,
    model_store: ModelStoreResource,
    federated_settings: FederatedSettingsResource,
    training_settings: TrainingSettingsResource,
    reporter: ReporterResource,
) -> Iterator[dg.AssetMaterialization]:
    """Local training of every learner of the run's buckets with enough new interactions since their
    last session; one `"ModelTrainingSession"` row per learner."""
    federated_settings.require_enabled()
    reg, store, report = registry.get_registry(), model_store.get_store(), reporter.for_context(context)
    threads = training_settings.torch_threads(context.instance)
    with fail_fast_unless_transient():
        selection = ready_to_train(reg, bucket_numbers(context.partition_keys))
        report(f"Training {len(selection.learners)} learner model(s) in {len(context.partition_keys)} bucket(s)...")
        batch = train_learners_locally(
            reg,
            store,
            selection.learners,
            epochs=training_settings.local_epochs,
            proximal_mu=training_settings.local_proximal_mu,
            num_threads=threads,
        )
    _report_refused(context, selection)
    failures = {learner: diagnose(exc).line for learner, exc in batch.failures.items()}
    trained = batch.outcomes
    outcomes = [t.result for t in trained.values()]
    if outcomes:
        rebased = sum(1 for o in outcomes if o.rebased_from is not None)
        report(
            f"✓ Trained {len(outcomes)} learner model(s) ({rebased} rebased onto the active version); "
            f"held-out accuracy {fmean(o.accuracy_before for o in outcomes):.2%} -> "
            f"{fmean(o.accuracy_after for o in outcomes):.2%}"
        )
    _report_data_quality(report, batch)
    yield from _bucket_materializations(
        context, "trained", trained, failures, _training_metadata, _data_quality_by_bucket(context, batch)
    )
    _fail_if_any(failures, len(outcomes), "Local training")


def _data_quality_by_bucket(context: dg.AssetExecutionContext, batch: TrainedBatch) -> dict[int, dict[str, Any]]:
    """Per bucket: the app's rows skipped by reason (summed: no learner's own count), the learners
    left for a later week for want of usable rows, and the clones rebuilt."""

    def empty() -> dict[str, Any]:
        return {"skipped_rows": dict.fromkeys(ROW_PROBLEMS, 0), "not_trained": 0, "rebuilt": 0}

    out = {bucket_index(key): empty() for key in context.partition_keys}
    for learner, counts in batch.skipped_rows.items():
        add_counts(out.setdefault(bucket_of(learner), empty())["skipped_rows"], counts)
    for field, learners in (("not_trained", batch.not_trained), ("rebuilt", batch.rebuilt)):
        for learner in learners:
            out.setdefault(bucket_of(learner), empty())[field] += 1
    return {b: {**m, "skipped_rows": dg.MetadataValue.json(m["skipped_rows"])} for b, m in out.items()}


def _report_data_quality(report: Callable[[str], None], batch: TrainedBatch) -> None:
    skipped: dict[str, int] = {}
    for counts in batch.skipped_rows.values():
        add_counts(skipped, counts)
    if skipped:
        report(f"Skipped {sum(skipped.values())} unusable interaction row(s): {describe_skipped(skipped)}")
    if batch.not_trained:
        report(f"{len(batch.not_trained)} learner(s) not trained this week: too few usable interactions")
    if batch.rebuilt:
        report(f"Rebuilt {len(batch.rebuilt)} damaged clone(s) from the active main version before training")
