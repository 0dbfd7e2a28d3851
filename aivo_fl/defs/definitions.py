"""The one `Definitions` object that `workspace.yaml` loads, merged from each concern's own."""

from __future__ import annotations

import dagster as dg

from aivo_fl.config import Settings, load_settings
from aivo_fl.defs import asset_checks, jobs, schedules, sensors
from aivo_fl.defs.assets import curriculum, federated, learners, main_model
from aivo_fl.defs.resources import build_resources


def build_definitions(settings: Settings, *, echo: bool = False) -> dg.Definitions:
    """All definitions bound to resources built from `settings`; `echo` also prints progress (CLI)."""
    return dg.Definitions.merge(
        curriculum.defs,
        main_model.defs,
        learners.defs,
        federated.defs,
        asset_checks.defs,
        jobs.defs,
        sensors.defs,
        schedules.schedule_definitions(settings.aggregation_timezone),
        dg.Definitions(resources=build_resources(settings, echo=echo)),
    )


defs = build_definitions(load_settings())
