"""Sensors: provision clones for new learners, retrain learners with new activity.

Both ask for a couple of runs per tick at most, however many learners need work and wherever their
hash buckets fall: a run covers a contiguous range of buckets (its `aivo/buckets` tag,
`defs/partitions.py`) and handles every learner of those buckets that needs the work when it
starts. A tick cuts the buckets needing work into at most MAX_RUNS_PER_TICK ranges, one per
LEARNERS_PER_RUN learners. A bucket covered by a queued or running run of the same job is not asked
for until that run ends, so nobody is handled twice at once.
"""

import hashlib
import json
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

import dagster as dg

from aivo_fl.defs.jobs import clone_learners_job, train_learners_job
from aivo_fl.defs.partitions import EVERY_BUCKET, bucket_span_tag, parse_bucket_span
from aivo_fl.defs.resources import DISABLED_REASON, FederatedSettingsResource, RegistryResource
from aivo_fl.defs.run_tags import BUCKETS_TAG
from aivo_fl.ml.store.learner_buckets import bucket_index, bucket_key, bucket_of, group_by_bucket
from aivo_fl.operations.cohorts import MIN_NEW_INTERACTIONS, valid_ids
from aivo_fl.registry import ModelRegistry

# Runs a tick asks for, at most: each is a process (the run launcher's, or a Celery task) that
# imports torch and Dagster, so a tick's cost is fixed whatever the learners' buckets.
MAX_RUNS_PER_TICK = 2
# Learners that make a second run of a tick worth its process: the work is then shared by two
# cores or two Celery workers (cloning 1,000 learners takes ~1.5 s, training them ~10 s).
LEARNERS_PER_RUN = 1_000
# Learners scanned per tick; a larger backlog is paged through with the cursor. Runs handle whole
# buckets, so one page usually already names every bucket of a large backlog.
SCAN_LIMIT = 20_000
# A learner still without a model after this many failed cloning runs of its bucket is given up
# on, by name (its bucket's later runs still try it).
MAX_CLONE_ATTEMPTS = 3
# Latest ended runs of a job read to find each bucket's latest run.
HISTORY = 500

IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]
ENDED = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]

# Partition tags of runs from when the learner assets were partitioned by bucket.
RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"
PARTITION = "dagster/partition"


def run_buckets(run: dg.DagsterRun) -> range:
    """The buckets a run covers: its `aivo/buckets` range, else its partition tags (runs from the
    partitioned assets; none for those from before buckets), else every bucket (the UI's launch)."""
    try:
        if BUCKETS_TAG in run.tags:
            return parse_bucket_span(run.tags[BUCKETS_TAG])
        single = run.tags.get(PARTITION)
        start, end = run.tags.get(RANGE_START, single), run.tags.get(RANGE_END, single)
        if start and end:
            return range(bucket_index(start), bucket_index(end) + 1)
    except ValueError:
        return range(0)
    return EVERY_BUCKET


@dataclass
class BucketRuns:
    in_flight: set[int] = field(default_factory=set)
    latest_ended: dict[int, dg.DagsterRun] = field(default_factory=dict)


def bucket_runs(instance: dg.DagsterInstance, job: dg.JobDefinition) -> BucketRuns:
    """Which buckets a queued or running run of `job` covers, and each bucket's latest ended run."""
    runs = BucketRuns()
    for record in instance.get_run_records(dg.RunsFilter(job_name=job.name, statuses=IN_FLIGHT)):
        runs.in_flight.update(run_buckets(record.dagster_run))
    for record in instance.get_run_records(dg.RunsFilter(job_name=job.name, statuses=ENDED), limit=HISTORY):
        for bucket in run_buckets(record.dagster_run):
            runs.latest_ended.setdefault(bucket, record.dagster_run)  # newest first
    return runs


def _balanced(piece: list[int], groups: Mapping[int, Sequence[str]]) -> list[list[int]]:
    """`piece` (sorted buckets) cut into consecutive parts of about LEARNERS_PER_RUN learners each,
    at most MAX_RUNS_PER_TICK parts, with about as many learners in each."""
    total = sum(len(groups[b]) for b in piece)
    count = min(MAX_RUNS_PER_TICK, -(-total // LEARNERS_PER_RUN), len(piece))
    parts: list[list[int]] = [[]]
    done = 0
    for bucket in piece:
        if parts[-1] and len(parts) < count and done * count >= total * len(parts):
            parts.append([])
        parts[-1].append(bucket)
        done += len(groups[bucket])
    return parts


def cut(groups: Mapping[int, Sequence[str]], blocked: Collection[int] = ()) -> list[range]:
    """The buckets of `groups` as at most MAX_RUNS_PER_TICK ranges. A range bridges any gap that
    holds no `blocked` bucket (covered by a run in flight, or where a learner was given up on);
    a stretch of more than LEARNERS_PER_RUN learners is cut in balanced parts; the ranges with the
    most learners go first and the rest wait for a later tick."""
    pieces: list[list[int]] = []
    for bucket in sorted(groups):
        if pieces and not any(b in blocked for b in range(pieces[-1][-1] + 1, bucket)):
            pieces[-1].append(bucket)
        else:
            pieces.append([bucket])
    parts = [part for piece in pieces for part in _balanced(piece, groups)]
    parts.sort(key=lambda part: -sum(len(groups[b]) for b in part))
    return sorted((range(part[0], part[-1] + 1) for part in parts[:MAX_RUNS_PER_TICK]), key=lambda span: span.start)


def bucket_requests(
    prefix: str, groups: dict[int, list[str]], blocked: Collection[int], salt: Callable[[range, list[str]], str]
) -> list[dg.RunRequest]:
    """A run request per range of `cut`. The run key names the range and hashes its learners and
    `salt(range, learners)`: the same work asked for again gets the same key, so the daemon
    launches it once, and a changed salt makes a fresh key."""
    requests = []
    for span in cut(groups, blocked):
        learners = sorted(learner for bucket in span for learner in groups.get(bucket, []))
        start, end = bucket_key(span[0]), bucket_key(span[-1])
        digest = hashlib.sha256("\n".join([*learners, salt(span, learners)]).encode()).hexdigest()[:16]
        requests.append(
            dg.RunRequest(run_key=f"{prefix}:{start}..{end}:{len(learners)}:{digest}", tags=bucket_span_tag(span))
        )
    return requests


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


@dataclass
class ClonePlan:
    wanted: dict[int, list[str]] = field(default_factory=dict)  # bucket -> learners to ask for
    attempts: dict[str, list[str]] = field(default_factory=dict)  # learner -> failed runs of its bucket
    given_up: list[str] = field(default_factory=list)
    waiting: int = 0  # learners in buckets with a cloning run in flight
    runs: BucketRuns = field(default_factory=BucketRuns)


def plan_cloning(instance: dg.DagsterInstance, learners: Sequence[str], attempts: dict[str, list[str]]) -> ClonePlan:
    """Which buckets to ask for. A learner whose bucket's latest cloning run failed (or was killed
    and marked failed) counts that run as an attempt; after MAX_CLONE_ATTEMPTS it is given up on.
    (A learner that arrived after that run is counted too: it still gets the remaining attempts.)"""
    plan = ClonePlan()
    if not learners:
        return plan  # an idle tick asks Dagster for nothing
    plan.runs = bucket_runs(instance, clone_learners_job)
    for learner in learners:
        bucket, failed = bucket_of(learner), list(attempts.get(learner, []))
        latest = plan.runs.latest_ended.get(bucket)
        if bucket in plan.runs.in_flight:
            plan.waiting += 1
        elif latest is not None and latest.status != dg.DagsterRunStatus.SUCCESS and latest.run_id not in failed:
            failed.append(latest.run_id)
        if failed:
            plan.attempts[learner] = failed
        if bucket in plan.runs.in_flight:
            continue
        if len(failed) >= MAX_CLONE_ATTEMPTS:
            plan.given_up.append(learner)
        else:
            plan.wanted.setdefault(bucket, []).append(learner)
    return plan


def _clone_salt(plan: ClonePlan) -> Callable[[range, list[str]], str]:
    """A bucket asked for again after a run of it ended needs a fresh run key: the latest runs of
    the range and the failed runs counted against its learners go into it (the latter also when
    the latest run is older than HISTORY)."""
    latest = plan.runs.latest_ended

    def salt(span: range, learners: list[str]) -> str:
        runs = {latest[b].run_id for b in span if b in latest}
        return ",".join(sorted(runs.union(*(plan.attempts.get(learner, []) for learner in learners))))

    return salt


@_federated_sensor(clone_learners_job, interval_seconds=30)
def new_learner_sensor(context: dg.SensorEvaluationContext, reg: ModelRegistry) -> dg.SensorResult:
    """Buckets holding learners with a completed baseline and no model get a cloning run.

    The cursor is the last learner id scanned, so a backlog larger than one tick's scan is paged
    through (a scan that reaches the end starts over, so nobody behind the cursor is missed). A
    bucket with a cloning run in flight is not asked for again; a learner left without a model by
    a failed or killed run is asked for again up to MAX_CLONE_ATTEMPTS runs, then named.
    Learners deleted in the app are erased by `deleted_learner_sensor` (`defs/erasure.py`).
    """
    state = json.loads(context.cursor) if context.cursor else {}
    scanned = reg.learners_needing_model(after=state.get("after"), limit=SCAN_LIMIT)
    selection = valid_ids(scanned)
    for reason in list(selection.refused.values())[:10]:
        context.log.warning(f"Not cloning: {reason}")
    plan = plan_cloning(context.instance, selection.learners, state.get("attempts", {}))
    # JSON, because Dagster keeps the previous cursor when a tick returns an empty one.
    cursor = json.dumps({"after": scanned[-1] if len(scanned) == SCAN_LIMIT else None, "attempts": plan.attempts})
    if not plan.wanted:
        notes = [f"{len(selection.refused)} refused ids"] if selection.refused else []
        if plan.waiting:
            notes.append(f"{plan.waiting} waiting for a cloning run in flight")
        if plan.given_up:
            notes.append(
                f"no model after {MAX_CLONE_ATTEMPTS} cloning attempts: {', '.join(sorted(plan.given_up)[:5])}"
            )
        return dg.SensorResult(
            skip_reason="No new learners" + (f" ({'; '.join(notes)})" if notes else ""), cursor=cursor
        )
    if plan.given_up:
        context.log.warning(
            f"No model after {MAX_CLONE_ATTEMPTS} cloning attempts for {len(plan.given_up)} learner(s) "
            f"({', '.join(sorted(plan.given_up)[:10])}); see their buckets' failed clone_learners runs"
        )
    blocked = plan.runs.in_flight | {bucket_of(learner) for learner in plan.given_up}
    requests = bucket_requests("clone", plan.wanted, blocked, _clone_salt(plan))
    waiting = sum(len(v) for v in plan.wanted.values())
    context.log.info(f"{waiting} learner(s) without a model in {len(plan.wanted)} bucket(s): {len(requests)} run(s)")
    return dg.SensorResult(run_requests=requests, cursor=cursor)


@_federated_sensor(train_learners_job, interval_seconds=300)
def learner_activity_sensor(context: dg.SensorEvaluationContext, reg: ModelRegistry) -> dg.SensorResult | dg.SkipReason:
    """Buckets holding learners with MIN_NEW_INTERACTIONS+ new interactions since their last
    session get a local training run.

    A sensor rather than a daily schedule: it retrains when a learner has something new to learn
    from, not on the clock, and a learner with nothing new costs nothing. A run key carries the
    newest interaction id of its learners, so the same activity is never trained twice, and a
    bucket with a training run in flight waits for it to end.
    """
    ready = reg.learners_with_new_interactions(MIN_NEW_INTERACTIONS)
    learners = valid_ids(learner for learner, _, _ in ready).learners
    if not learners:
        return dg.SkipReason(f"No learner has {MIN_NEW_INTERACTIONS}+ new interactions")
    newest = {learner: latest for learner, _, latest in ready}
    runs = bucket_runs(context.instance, train_learners_job)
    groups = {b: ids for b, ids in group_by_bucket(learners).items() if b not in runs.in_flight}
    if not groups:
        return dg.SkipReason(f"{len(learners)} learner(s) ready, all in buckets with a training run in flight")
    requests = bucket_requests("train", groups, runs.in_flight, _training_salt(context.instance, runs, newest))
    return dg.SensorResult(run_requests=requests)


def _training_salt(
    instance: dg.DagsterInstance, runs: BucketRuns, newest: Mapping[str, int]
) -> Callable[[range, list[str]], str]:
    """The newest interaction of the run's learners: new activity makes a fresh key, the same does
    not. A run of the range that ended before its step did (its Celery worker died and run
    monitoring ended it) adds its id, so the learners it left are asked for again; a run whose step
    failed them is not retried until they have new activity."""

    def salt(span: range, learners: list[str]) -> str:
        latest = {runs.latest_ended[b].run_id: runs.latest_ended[b] for b in span if b in runs.latest_ended}
        unfinished = [run_id for run_id, run in latest.items() if _left_unfinished(instance, run)]
        return ",".join([str(max(newest[k] for k in learners)), *sorted(unfinished)])

    return salt


def _left_unfinished(instance: dg.DagsterInstance, run: dg.DagsterRun) -> bool:
    """Whether a run ended without its step's outcome: neither a step success nor a step failure."""
    if run.status == dg.DagsterRunStatus.SUCCESS:
        return False
    outcomes = {dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE}
    return not instance.get_records_for_run(run.run_id, of_type=outcomes, limit=1).records
