"""The weekly aggregation round: Sundays 02:00, as the activation guide's cron line."""

import dagster as dg

from aivo_fl.defs.jobs import federated_aggregation_job
from aivo_fl.defs.resources import DISABLED_REASON, FederatedSettingsResource

WEEKLY_CRON = "0 2 * * 0"


def build_weekly_aggregation_schedule(timezone: str) -> dg.ScheduleDefinition:
    @dg.schedule(
        name="weekly_aggregation_schedule",
        cron_schedule=WEEKLY_CRON,
        job=federated_aggregation_job,
        execution_timezone=timezone,
        description="One aggregation round with the default options (AGGREGATION_TIMEZONE sets the zone)",
    )
    def weekly_aggregation_schedule(
        context: dg.ScheduleEvaluationContext, federated_settings: FederatedSettingsResource
    ) -> dg.RunRequest | dg.SkipReason:
        if not federated_settings.use_federated_learning:
            return dg.SkipReason(DISABLED_REASON)
        return dg.RunRequest(tags={"aivo/trigger": "weekly_schedule"})

    return weekly_aggregation_schedule


def schedule_definitions(timezone: str) -> dg.Definitions:
    # Built per settings (not at import) so AGGREGATION_TIMEZONE is the deployment's own.
    return dg.Definitions(schedules=[build_weekly_aggregation_schedule(timezone)])
