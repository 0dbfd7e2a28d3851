"""The aggregation schedule: the activation guide's weekly cron line, with its options from settings.

Built per settings (not discovered from the module) because the cron line, the time zone and the
round's options are the deployment's own (`AGGREGATION_CRON`, `AGGREGATION_TIMEZONE`,
`AGGREGATION_MIN_LEARNERS`, ...). The options go into each run's config, so the UI shows exactly
what a scheduled round ran with.
"""

from typing import Any

import dagster as dg

from aivo_fl.config import Settings
from aivo_fl.defs.jobs import federated_aggregation_job
from aivo_fl.defs.resources import DISABLED_REASON, FederatedSettingsResource
from aivo_fl.defs.run_tags import TRIGGER_TAG

SCHEDULE_NAME = "weekly_aggregation_schedule"


def scheduled_round_config(settings: Settings) -> dict[str, Any]:
    """The `federated_main_model` config a scheduled round runs with."""
    return {
        "min_learners": settings.aggregation_min_learners,
        "strategy": settings.aggregation_strategy,
        "max_stale_days": settings.aggregation_max_stale_days,
        # no learning_rate: the run takes SERVER_LEARNING_RATE from its settings resource
    }


def build_aggregation_schedule(settings: Settings) -> dg.ScheduleDefinition:
    options = scheduled_round_config(settings)
    shown = ", ".join(f"{k}={v}" for k, v in options.items())

    @dg.schedule(
        name=SCHEDULE_NAME,
        cron_schedule=settings.aggregation_cron,
        job=federated_aggregation_job,
        execution_timezone=settings.aggregation_timezone,
        # Running from the start: it skips, saying why, until USE_FEDERATED_LEARNING is on.
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"One aggregation round ({shown}); AGGREGATION_CRON and AGGREGATION_* settings",
        metadata={**options, "cron": settings.aggregation_cron, "timezone": settings.aggregation_timezone},
    )
    def weekly_aggregation_schedule(
        context: dg.ScheduleEvaluationContext, federated_settings: FederatedSettingsResource
    ) -> dg.RunRequest | dg.SkipReason:
        if not federated_settings.use_federated_learning:
            return dg.SkipReason(DISABLED_REASON)
        return dg.RunRequest(
            run_config={"ops": {"federated_main_model": {"config": options}}},
            tags={TRIGGER_TAG: "schedule"},  # the options are in the run's config
        )

    return weekly_aggregation_schedule
