"""Tick a sensor as the daemon would: the command line's demo and the tests share this."""

from __future__ import annotations

import dagster as dg


def tick_sensor(
    defs: dg.Definitions, instance: dg.DagsterInstance, sensor_name: str, cursor: str | None = None
) -> dg.SensorExecutionData:
    """Evaluate the sensor, then apply its partition requests (evaluation alone does not)."""
    sensor = defs.resolve_sensor_def(sensor_name)
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, definitions=defs, resources=defs.resources
    ) as context:
        data = sensor.evaluate_tick(context)
    for request in data.dynamic_partitions_requests or []:
        if isinstance(request, dg.AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        else:
            for key in request.partition_keys:
                instance.delete_dynamic_partition(request.partitions_def_name, key)
    return data
