"""Per-learner assets: the personalized clones and their local training.

A run covers a range of learner buckets (its `aivo/buckets` tag, `defs/partitions.py`; every
bucket when launched from the UI) and handles every learner of those buckets that needs the work.
A run that handled somebody records one materialization: how many learners it handled, in how many
buckets, its failures counted by reason (no learner id) and how many learners have a model now,
so the asset's plots count learners. Per-learner status and lineage are the registry's. One
learner's failure fails only that learner: the others are handled, the materialization is
recorded, and then the run fails naming them.
"""

from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping
from functools import partial
from statistics import fmean
from typing import Any

import dagster as dg

from aivo_fl.defs.assets.main_model import main_model
from aivo_fl.defs.partitions import run_bucket_span
from aivo_fl.defs.readable import percent, rounded
from aivo_fl.defs.resources import (
    FederatedSettingsResource,
    ModelStoreResource,
    RegistryResource,
    ReporterResource,
    TrainingSettingsResource,
)
from aivo_fl.defs.retries import TRANSIENT_RETRY, fail_fast_unless_transient
from aivo_fl.defs.run_tags import bucket_range
from aivo_fl.ml.store.cloning import CloneInfo
from aivo_fl.ml.store.learner_buckets import bucket_key, bucket_of
from aivo_fl.operations.cohorts import Selection, needing_model, ready_to_train
from aivo_fl.operations.errors import diagnose
from aivo_fl.operations.learners import LearnerTrainingOutcome, clone_learners, train_learners_locally
from aivo_fl.operations.recovery import clean_store
from aivo_fl.registry import ModelRegistry

# Failures listed by name in a run's failure (all are counted); reasons kept in the roll-up.
MAX_LISTED = 20
MAX_REASONS = 20


def _learner_asset(**kwargs: Any) -> Callable[[Callable[..., Any]], dg.AssetsDefinition]:
    """What both per-learner assets share: retries of transient errors, and no materialization
    from a run that found nobody to handle."""
    return dg.asset(
        group_name="learners", kinds={"pytorch"}, retry_policy=TRANSIENT_RETRY, output_required=False, **kwargs
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
            metadata={"failures_by_reason": dg.MetadataValue.json(failure_rollup(failures)), "succeeded": done},
            allow_retries=False,
        )


def failure_rollup(failures: Mapping[str, str]) -> dict[str, int]:
    """Failures counted by reason, most frequent first (at most MAX_REASONS): each learner's id is
    taken out of its reason, so learners failing the same way count together and no id is kept."""
    reasons = Counter(reason.replace(learner, "<learner>") for learner, reason in failures.items())
    return dict(reasons.most_common(MAX_REASONS))


def _run_materialization(
    context: dg.AssetExecutionContext,
    verb: str,
    done: Collection[str],
    failures: Mapping[str, str],
    described: Callable[[], dict[str, Any]],
) -> dg.MaterializeResult | None:
    """The run's one materialization when it handled anybody: `verb` (cloned, trained), failed, the
    failures by reason, the buckets covered and handled, and the `described` results."""
    if not done and not failures:
        context.log.info("Nobody to handle in this run's buckets: nothing materialized")
        return None
    span = run_bucket_span(context.run.tags)
    return dg.MaterializeResult(
        metadata={
            verb: len(done),
            "failed": len(failures),
            "failures_by_reason": dg.MetadataValue.json(failure_rollup(failures)),
            "buckets": bucket_range(bucket_key(span[0]), bucket_key(span[-1])),
            "buckets_handled": len({bucket_of(learner) for learner in [*done, *failures]}),
            **described(),
        }
    )


def _report_refused(context: dg.AssetExecutionContext, selection: Selection) -> None:
    # Ids the app wrote that could escape the model store are never handled; saying so is enough.
    for reason in list(selection.refused.values())[:10]:
        context.log.warning(f"Not handled: {reason}")


def _versions(versions: set[str]) -> str:
    return ", ".join(sorted(versions)) or "-"


def _clone_metadata(clones: list[CloneInfo], reg: ModelRegistry) -> dict[str, Any]:
    return {
        "source_version": _versions({c.source_version for c in clones}),
        "bytes_per_learner": round(fmean(c.bytes_on_disk for c in clones)) if clones else 0,
        **_learner_counts(reg),
    }


def _learner_counts(reg: ModelRegistry) -> dict[str, int]:
    # Counts over every bucket, so the asset's plots show learners served, not runs.
    stats = reg.get_statistics()
    return {"learners_with_model": stats["activeLearnerModels"], "training_sessions": stats["totalTrainingSessions"]}


@_learner_asset(deps=[main_model])
def learner_models(
    context: dg.AssetExecutionContext,
    registry: RegistryResource,
    model_store: ModelStoreResource,
    federated_settings: FederatedSettingsResource,
    reporter: ReporterResource,
) -> Iterator[dg.MaterializeResult]:
    """Every learner of the run's buckets with a completed baseline and no model gets a personalized
    clone of the active main version (frozen trunk, own heads) and a `"PersonalizedModel"` row."""
    federated_settings.require_enabled()
    reg, store, report = registry.get_registry(), model_store.get_store(), reporter.for_context(context)
    clean_store(store, report)
    with fail_fast_unless_transient():
        span = run_bucket_span(context.run.tags)
        selection = needing_model(reg, span)
        report(f"Cloning {len(selection.learners)} learner model(s) in {len(span)} bucket(s)...")
        batch = clone_learners(reg, store, selection.learners, base_model=model_store.base_model_name)
    _report_refused(context, selection)
    clones = {clone.learner_id: clone for clone in batch.clones}
    version = _versions({c.source_version for c in batch.clones})
    report(f"✓ Cloned {len(clones)} learner model(s) from main version {version}")
    described = partial(_clone_metadata, batch.clones, reg)
    if materialization := _run_materialization(context, "cloned", clones, batch.failures, described):
        yield materialization
    _fail_if_any(batch.failures, len(clones), "Cloning")


def _training_metadata(trained: list[LearnerTrainingOutcome], reg: ModelRegistry) -> dict[str, Any]:
    outcomes = [t.result for t in trained]
    return {
        "source_version": _versions({o.source_version for o in outcomes}),
        "rebased": sum(1 for o in outcomes if o.rebased_from is not None),
        "mean_accuracy_before_pct": percent(fmean(o.accuracy_before for o in outcomes)) if outcomes else 0.0,
        "mean_accuracy_after_pct": percent(fmean(o.accuracy_after for o in outcomes)) if outcomes else 0.0,
        "mean_delta_norm": rounded(fmean(o.delta_norm for o in outcomes)) if outcomes else 0.0,
        "samples": sum(o.samples for o in outcomes),
        **_learner_counts(reg),
    }


@_learner_asset(deps=[learner_models])
def learner_training(
    context: dg.AssetExecutionContext,
    registry: RegistryResource,
    model_store: ModelStoreResource,
    federated_settings: FederatedSettingsResource,
    training_settings: TrainingSettingsResource,
    reporter: ReporterResource,
) -> Iterator[dg.MaterializeResult]:
    """Local training of every learner of the run's buckets with enough new interactions since their
    last session; one `"ModelTrainingSession"` row per learner."""
    federated_settings.require_enabled()
    reg, store, report = registry.get_registry(), model_store.get_store(), reporter.for_context(context)
    threads = training_settings.torch_threads(context.instance)
    with fail_fast_unless_transient():
        span = run_bucket_span(context.run.tags)
        selection = ready_to_train(reg, span)
        report(f"Training {len(selection.learners)} learner model(s) in {len(span)} bucket(s)...")
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
    described = partial(_training_metadata, list(trained.values()), reg)
    if materialization := _run_materialization(context, "trained", trained, failures, described):
        yield materialization
    _fail_if_any(failures, len(outcomes), "Local training")
