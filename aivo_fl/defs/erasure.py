"""Learners deleted in the app are erased by a job, requested by a sensor (never inside a tick).

The sensor makes one registry query per tick (learners deleted in the app that still hold data)
and asks for one `erase_learners` run when there are any and none is in flight. The run reads the
list itself, so no learner id is written into Dagster's run config; its materialization is the
erasure report, keyed by the same keyed hash as the contribution audit trail.
"""

import datetime as dt
from pathlib import Path

import dagster as dg

from aivo_fl.defs.resources import (
    DISABLED_REASON,
    ErasureResource,
    FederatedSettingsResource,
    ModelStoreResource,
    RegistryResource,
    ReporterResource,
)
from aivo_fl.defs.retries import TRANSIENT_RETRY
from aivo_fl.defs.run_tags import RUN_TAG, RunKind
from aivo_fl.defs.sensors import IN_FLIGHT
from aivo_fl.operations.erasure import erasable, erase_everywhere

# Learners erased per run; a longer list is finished by the next runs.
ERASE_PER_RUN = 1_000
# After a failed erasure run, wait this long before asking again (the failure alert has gone out).
RETRY_AFTER = dt.timedelta(hours=1)


@dg.asset(group_name="learners", kinds={"python"}, retry_policy=TRANSIENT_RETRY)
def erased_learners(
    context: dg.AssetExecutionContext,
    registry: RegistryResource,
    model_store: ModelStoreResource,
    erasure: ErasureResource,
    reporter: ReporterResource,
) -> dg.MaterializeResult:
    """Erasure report: learners deleted in the app, with their interactions, sessions, model and
    files removed (counts per learner, under the keyed hash of the learner id). Learner assets are
    partitioned by hash bucket, so no learner id is a partition key and none is left to delete."""
    reg, store, key = registry.get_registry(), model_store.get_store(), erasure.require_key()
    pending = erasable(reg.deleted_learner_ids())[0][:ERASE_PER_RUN]
    report = {}
    for learner_id in pending:
        erased = erase_everywhere(reg, store, learner_id, key, Path(reporter.aggregation_log_path))
        report[erased.pseudonym] = erased.summary()
    context.log.info(f"Erased {len(report)} learner(s) deleted in the app")
    return dg.MaterializeResult(
        metadata={
            "learners": len(report),
            "rows_deleted": sum(sum(r["rows"].values()) for r in report.values()),
            "files_deleted": sum(r["files"] for r in report.values()),
            "report": dg.MetadataValue.json(report),
        }
    )


erase_learners_job = dg.define_asset_job(
    "erase_learners", selection=dg.AssetSelection.assets(erased_learners), tags={RUN_TAG: RunKind.ERASURE.value}
)


def _waiting_reason(instance: dg.DagsterInstance) -> str | None:
    """Why not to ask for a run now: one is in flight, or the last one failed less than RETRY_AFTER ago."""
    [latest] = instance.get_run_records(dg.RunsFilter(job_name=erase_learners_job.name), limit=1) or [None]
    if latest is None:
        return None
    if latest.dagster_run.status in IN_FLIGHT:
        return f"An erase_learners run is in flight ({latest.dagster_run.run_id})"
    ended = latest.end_time
    if latest.dagster_run.status == dg.DagsterRunStatus.FAILURE and ended is not None:
        wait = dt.datetime.fromtimestamp(ended, dt.UTC) + RETRY_AFTER - dt.datetime.now(dt.UTC)
        if wait > dt.timedelta(0):
            return f"The last erase_learners run failed ({latest.dagster_run.run_id}); asking again in {wait}"
    return None


@dg.sensor(job=erase_learners_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def deleted_learner_sensor(
    context: dg.SensorEvaluationContext, registry: RegistryResource, federated_settings: FederatedSettingsResource
) -> dg.RunRequest | dg.SkipReason:
    """Ask for an `erase_learners` run when learners deleted in the app still have data here."""
    if not federated_settings.use_federated_learning:
        return dg.SkipReason(f"{DISABLED_REASON} (erase_learners can still be launched from the UI)")
    pending, ignored = erasable(registry.get_registry().deleted_learner_ids())
    if not pending:
        note = f" ({ignored} path-like id(s) ignored: aivo-fl never stored data for them)" if ignored else ""
        return dg.SkipReason("No deleted learners to erase" + note)
    waiting = _waiting_reason(context.instance)
    if waiting:
        return dg.SkipReason(waiting)
    return dg.RunRequest(tags={"aivo/learners_to_erase": str(len(pending))})
