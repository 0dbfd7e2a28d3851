"""Sensors: provision clones for new learners, retrain learners with new activity.

Both batch: a tick asks for a few runs that each cover a contiguous range of learner partitions
(dynamic partition keys keep insertion order), never one run per learner.
"""

import hashlib
import json
from collections.abc import Callable, Sequence

import dagster as dg

from aivo_fl.defs.jobs import clone_learners_job, train_learners_job
from aivo_fl.defs.partitions import learner_partitions
from aivo_fl.defs.resources import DISABLED_REASON, FederatedSettingsResource, RegistryResource
from aivo_fl.ml.learner_ids import InvalidLearnerId, validate_learner_id
from aivo_fl.registry import ModelRegistry

# Partitions per run: big enough that 10,000 learners are 20 runs, small enough that one run
# (about 30-40 ms of event-log work per partition) finishes in well under a minute.
PARTITIONS_PER_RUN = 500
# Learners scanned per tick; a larger backlog is paged through with the cursor.
SCAN_LIMIT = 20_000
# New interactions since the last session that make a learner worth retraining.
MIN_NEW_INTERACTIONS = 20

# A learner whose cloning keeps failing is asked for this many times, then reported by name.
MAX_CLONE_ATTEMPTS = 3
IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]

RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"


def _range_request(prefix: str, keys: Sequence[str], salt: str = "") -> dg.RunRequest:
    digest = hashlib.sha256("\n".join([*keys, salt]).encode()).hexdigest()[:16]
    return dg.RunRequest(
        run_key=f"{prefix}:{keys[0]}..{keys[-1]}:{len(keys)}:{digest}",
        tags={RANGE_START: keys[0], RANGE_END: keys[-1]},
    )


def _chunks(keys: Sequence[str], size: int) -> list[Sequence[str]]:
    return [keys[i : i + size] for i in range(0, len(keys), size)]


def _stretches(keys: Sequence[str], partition_keys: Sequence[str]) -> list[list[str]]:
    """Contiguous stretches of partitions (in partition order): one range run each."""
    position = {k: i for i, k in enumerate(partition_keys)}
    stretches: list[list[str]] = []
    for key in sorted(keys, key=position.__getitem__):
        if stretches and position[key] == position[stretches[-1][-1]] + 1 and len(stretches[-1]) < PARTITIONS_PER_RUN:
            stretches[-1].append(key)
        else:
            stretches.append([key])
    return stretches


def _cloning_runs_ended(instance: dg.DagsterInstance) -> bool:
    """Some cloning run has run and none is queued or running: a partition without a model now
    means its run failed or was killed (a killed CLI run is marked failed before the tick)."""
    job = dg.RunsFilter(job_name=clone_learners_job.name)
    in_flight = dg.RunsFilter(job_name=clone_learners_job.name, statuses=IN_FLIGHT)
    return bool(instance.get_runs(filters=job, limit=1)) and not instance.get_runs(filters=in_flight, limit=1)


def _retry_stranded(
    context: dg.SensorEvaluationContext, stranded: list[str], attempts: dict[str, int], partition_keys: Sequence[str]
) -> tuple[list[dg.RunRequest], list[str]]:
    """Learners with a partition but no model (their cloning run failed or was killed) are asked
    for again, up to MAX_CLONE_ATTEMPTS times, once cloning runs have run and none is in flight;
    then given up on, by name. Returns the run requests and the learners given up on."""
    if not stranded or not _cloning_runs_ended(context.instance):
        return [], []
    retry = [k for k in stranded if attempts.get(k, 0) < MAX_CLONE_ATTEMPTS]
    given_up = [k for k in stranded if k not in retry]
    for key in retry:
        attempts[key] = attempts.get(key, 0) + 1
    requests = [
        _range_request("clone", keys, salt=f"attempt-{max(attempts[k] for k in keys)}")
        for keys in _stretches(retry, partition_keys)
    ]
    if given_up:
        context.log.warning(
            f"No model after {MAX_CLONE_ATTEMPTS} cloning attempts for {len(given_up)} learner(s) "
            f"({', '.join(given_up[:10])}); see their failed clone_learners runs"
        )
    return requests, given_up


Evaluation = Callable[[dg.SensorEvaluationContext, ModelRegistry], dg.SensorResult | dg.SkipReason]


def _federated_sensor(job: dg.JobDefinition, interval_seconds: int) -> Callable[[Evaluation], dg.SensorDefinition]:
    """A sensor that runs from the start (the daemon ticks it) and skips, saying why, until
    USE_FEDERATED_LEARNING is on; the decorated function sees the context and the registry."""

    def define(evaluate: Evaluation) -> dg.SensorDefinition:
        @dg.sensor(
            name=evaluate.__name__,
            description=evaluate.__doc__,
            job=job,
            minimum_interval_seconds=interval_seconds,
            default_status=dg.DefaultSensorStatus.RUNNING,
        )
        def sensor(
            context: dg.SensorEvaluationContext,
            registry: RegistryResource,
            federated_settings: FederatedSettingsResource,
        ) -> dg.SensorResult | dg.SkipReason:
            if not federated_settings.use_federated_learning:
                return dg.SkipReason(DISABLED_REASON)
            return evaluate(context, registry.get_registry())

        return sensor

    return define


@_federated_sensor(clone_learners_job, interval_seconds=30)
def new_learner_sensor(context: dg.SensorEvaluationContext, reg: ModelRegistry) -> dg.SensorResult:
    """Learners with a completed baseline and no model get a partition and a cloning run.

    The cursor is the last learner id scanned, so a backlog larger than one tick's scan is paged
    through; an existing partition means "already requested", so nobody is cloned twice while a
    cloning run is in flight, but a learner whose run failed or was killed (partition, no model)
    is asked for again (`_retry_stranded`); and a scan that reaches the end wraps around, so a
    learner inserted behind the cursor is not missed.
    Learners deleted in the app are erased by `deleted_learner_sensor` (`defs/erasure.py`).
    """
    existing_in_order = context.instance.get_dynamic_partitions(learner_partitions.name)
    existing = set(existing_in_order)

    state = json.loads(context.cursor) if context.cursor else {}
    scanned = reg.learners_needing_model(after=state.get("after"), limit=SCAN_LIMIT)
    new, stranded, refused = [], [], []
    for learner_id in scanned:
        try:
            validate_learner_id(learner_id)
        except InvalidLearnerId as exc:
            refused.append(str(exc))
            continue
        (stranded if learner_id in existing else new).append(learner_id)
    for reason in refused[:10]:
        context.log.warning(f"Not cloning: {reason}")
    # Attempts are kept for learners still stranded (in a paged backlog, per page).
    attempts = {k: n for k, n in state.get("attempts", {}).items() if k in stranded}
    retries, given_up = _retry_stranded(context, stranded, attempts, list(existing_in_order))
    # JSON, because Dagster keeps the previous cursor when a tick returns an empty one.
    cursor = json.dumps({"after": scanned[-1] if len(scanned) == SCAN_LIMIT else None, "attempts": attempts})

    if not new and not retries:
        notes = [f"{len(refused)} refused ids"] if refused else []
        if given_up:
            notes.append(f"no model after {MAX_CLONE_ATTEMPTS} cloning attempts: {', '.join(given_up[:5])}")
        return dg.SensorResult(
            skip_reason="No new learners" + (f" ({'; '.join(notes)})" if notes else ""), cursor=cursor
        )
    context.log.info(f"{len(new)} new learner(s), {len(retries)} retried cloning run(s)")
    return dg.SensorResult(
        run_requests=[_range_request("clone", batch) for batch in _chunks(new, PARTITIONS_PER_RUN)] + retries,
        dynamic_partitions_requests=[learner_partitions.build_add_request(new)] if new else [],
        cursor=cursor,
    )


@_federated_sensor(train_learners_job, interval_seconds=300)
def learner_activity_sensor(context: dg.SensorEvaluationContext, reg: ModelRegistry) -> dg.SensorResult | dg.SkipReason:
    """Retrain learners with at least MIN_NEW_INTERACTIONS new interactions since their last session.

    A sensor rather than a daily schedule: it retrains when a learner has something new to learn
    from, not on the clock, and a learner with nothing new costs nothing. The run key carries each
    learner's newest interaction id, so the same activity is never trained twice.
    """
    ready = reg.learners_with_new_interactions(MIN_NEW_INTERACTIONS)
    if not ready:
        return dg.SkipReason(f"No learner has {MIN_NEW_INTERACTIONS}+ new interactions")
    partition_keys = context.instance.get_dynamic_partitions(learner_partitions.name)
    present = set(partition_keys)
    newest = {learner: latest for learner, _, latest in ready if learner in present}
    return dg.SensorResult(
        run_requests=[
            _range_request("train", keys, salt=str(max(newest[k] for k in keys)))
            for keys in _stretches(list(newest), partition_keys)
        ]
    )
