"""Tick a sensor as the daemon would: the command line's demo and the tests share this."""

from __future__ import annotations

import dagster as dg


def tick_sensor(
    defs: dg.Definitions, instance: dg.DagsterInstance, sensor_name: str, cursor: str | None = None
) -> dg.SensorExecutionData:
    """Evaluate the sensor on the instance (the caller launches the runs it asks for)."""
    sensor = defs.resolve_sensor_def(sensor_name)
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, definitions=defs, resources=defs.resources
    ) as context:
        return sensor.evaluate_tick(context)
