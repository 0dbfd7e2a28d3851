"""Learner assets are partitioned by cohort: a fixed hash bucket of the learner id.

1,024 static partitions (`bucket-0000` .. `bucket-1023`, `aivo_fl.ml.store.learner_buckets`), whatever
the number of learners: Dagster's event log pays per bucket a run covers, not per learner, and no
learner id ever becomes a partition key. Per-learner status, lineage and failures stay in the
registry and in each bucket's materialization metadata.
"""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg

from aivo_fl.ml.store.learner_buckets import BUCKET_KEYS, bucket_index

learner_buckets = dg.StaticPartitionsDefinition(BUCKET_KEYS)


def bucket_numbers(partition_keys: Sequence[str]) -> set[int]:
    return {bucket_index(key) for key in partition_keys}
