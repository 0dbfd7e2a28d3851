"""Alerts for failed runs and rejected or refused aggregation rounds (delivery: `operations/alerts.py`).

One run-failure sensor covers every case, because each of them fails its run: a round the
validation gate rejects fails its blocking check, a round past the privacy budget or without
enough learners fails its step. "No eligible learners" alone is normal for a quiet week, so it
alerts only after ALERT_AFTER_EMPTY_ROUNDS aggregation runs in a row ended that way. The sensor
watches every run on the instance, the CLI's included.
"""

from collections.abc import Iterable

import dagster as dg

from aivo_fl.defs.assets.federated import federated_main_model
from aivo_fl.defs.jobs import federated_aggregation_job
from aivo_fl.defs.resources import AlertsResource, RegistryResource
from aivo_fl.defs.run_tags import OUTCOME_TAG
from aivo_fl.operations.alerts import Alert

NO_ELIGIBLE = "no_eligible_learners"
TITLES = {
    "rejected": "Aggregation round rejected",
    "privacy_budget_exceeded": "Aggregation round refused: privacy budget",
    NO_ELIGIBLE: "No eligible learners",
}


def step_failure_reason(events: Iterable[dg.DagsterEvent]) -> str | None:
    """The failing step's own description (a `dg.Failure`), else the last line of its error."""
    for event in events:
        if event.event_type_value != "STEP_FAILURE":
            continue
        data = event.step_failure_data
        if data.user_failure_data is not None and data.user_failure_data.description:
            return data.user_failure_data.description
        if data.error is not None:
            return data.error.message.strip().splitlines()[-1]
    return None


def _round_metadata(instance: dg.DagsterInstance, run_id: str) -> dict[str, object]:
    """The round this run recorded (a rejected round is materialized, then fails its blocking check)."""
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    for record in records:
        materialization = record.asset_materialization
        if materialization is not None and materialization.asset_key == federated_main_model.key:
            return {k: v.value for k, v in materialization.metadata.items()}
    return {}


def empty_rounds_in_a_row(instance: dg.DagsterInstance, limit: int) -> int:
    """How many of the latest finished aggregation runs (up to `limit`) found no eligible learners."""
    runs = instance.get_runs(
        filters=dg.RunsFilter(
            job_name=federated_aggregation_job.name,
            statuses=[dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE],
        ),
        limit=limit,
    )
    streak = 0
    for run in runs:  # newest first
        if run.tags.get(OUTCOME_TAG) != NO_ELIGIBLE:
            break
        streak += 1
    return streak


def _active_version(registry: RegistryResource) -> dict[str, str]:
    try:
        active = registry.get_registry().get_active_version()
    except Exception:  # the alert goes out even when the registry is what failed
        return {}
    return {"active": active.version} if active else {}


def failure_alert(
    context: dg.RunFailureSensorContext, alerts: AlertsResource, registry: RegistryResource
) -> Alert | None:
    """The alert for a failed run, or None when the failure is not (yet) worth one."""
    run = context.dagster_run
    outcome = run.tags.get(OUTCOME_TAG, "")
    reason = step_failure_reason(context.get_step_failure_events()) or context.failure_event.message or "unknown"
    if outcome == NO_ELIGIBLE:
        if empty_rounds_in_a_row(context.instance, alerts.empty_rounds) < alerts.empty_rounds:
            return None
        reason = f"{alerts.empty_rounds}+ aggregation runs in a row without enough learners. Latest: {reason}"
    versions = _active_version(registry)
    metadata = _round_metadata(context.instance, run.run_id)
    if metadata:
        reason = str(metadata.get("rejection_reason") or reason)
        versions = {"base": str(metadata["base_version"]), "candidate": str(metadata.get("candidate_version", "-"))}
    return Alert(
        title=TITLES.get(outcome, f"Run of {run.job_name} failed"),
        reason=reason,
        job=run.job_name,
        run_id=run.run_id,
        run_url=alerts.run_url(run.run_id),
        round_id=str(metadata["update_id"]) if metadata.get("update_id") not in (None, "-") else None,
        versions=versions,
    )


@dg.run_failure_sensor(
    name="run_failure_alert",
    monitor_all_code_locations=True,  # CLI runs have no code location; they alert too
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
)
def run_failure_alert(
    context: dg.RunFailureSensorContext, alerts: AlertsResource, registry: RegistryResource
) -> dg.SkipReason | None:
    """POST a failed run's reason, round, versions and link to ALERT_WEBHOOK_URL (never fails itself)."""
    alert = failure_alert(context, alerts, registry)
    run_id = context.dagster_run.run_id
    if alert is None:
        return dg.SkipReason(f"Run {run_id}: no eligible learners, below the alert threshold")
    delivery = alerts.send(alert)
    if delivery is None:
        return dg.SkipReason(f"ALERT_WEBHOOK_URL is not set: not sent: {alert.title}: {alert.reason}")
    if not delivery.delivered:
        # Logged, not raised: a dead receiver must not hold up the sensor or the pipeline.
        context.log.error(f"Alert for run {run_id} not delivered after {delivery.attempts} attempts ({delivery.error})")
        return dg.SkipReason(f"Alert not delivered ({delivery.error})")
    context.log.info(f"Alert sent for run {run_id}: {alert.title}")
    return None
