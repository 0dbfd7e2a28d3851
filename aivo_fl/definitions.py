"""The code location `workspace.yaml` loads: everything under `aivo_fl/defs/`, bound to the settings.

Assets, checks, jobs and sensors are discovered from the `defs/` folder (Dagster's project layout,
`[tool.dg]` in pyproject.toml), so a new module there needs no registration. Only what depends on
the deployment's settings is added here: the schedule (cron line, time zone, round options) and
the resources.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import dagster as dg

from aivo_fl.config import Settings, load_settings
from aivo_fl.defs.resources import build_resources
from aivo_fl.defs.schedules import build_aggregation_schedule
from aivo_fl.workers import build_executor


@cache
def discovered_definitions() -> dg.Definitions:
    # Discovery imports every module under defs/ once per process; the CLI and tests rebind resources.
    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)


def build_definitions(settings: Settings, *, echo: bool = False) -> dg.Definitions:
    """All definitions bound to resources built from `settings`; `echo` also prints progress (CLI)."""
    return dg.Definitions.merge(
        discovered_definitions(),
        dg.Definitions(
            schedules=[build_aggregation_schedule(settings)],
            resources=build_resources(settings, echo=echo),
            executor=build_executor(settings),
        ),
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions(load_settings())
