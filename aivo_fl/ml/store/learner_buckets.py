"""Learner cohorts: every learner id belongs to one of a fixed number of hash buckets.

Per-learner work is scheduled per bucket, so the orchestrator's bookkeeping grows with the number
of buckets, not of learners. The bucket comes from SHA-256 of the id (never Python's `hash`,
which is salted per process), so it is the same in every process, on every host, forever:
changing BUCKETS or the hash would move every learner to another bucket.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

BUCKETS = 1_024
_PREFIX = "bucket-"


def bucket_of(learner_id: str) -> int:
    """The learner's bucket, 0 <= bucket < BUCKETS: the first 8 bytes of SHA-256(id) mod BUCKETS."""
    digest = hashlib.sha256(learner_id.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def bucket_key(bucket: int) -> str:
    """`bucket-0042`: zero-padded, so keys sort in bucket order."""
    if not 0 <= bucket < BUCKETS:
        raise ValueError(f"bucket {bucket} is outside 0..{BUCKETS - 1}")
    return f"{_PREFIX}{bucket:04d}"


def bucket_index(key: str) -> int:
    """The inverse of `bucket_key`; anything else is refused."""
    number = key.removeprefix(_PREFIX)
    if number == key or len(number) != 4 or not number.isdigit() or int(number) >= BUCKETS:
        raise ValueError(f"{key!r} is not a learner bucket (bucket-0000 .. {bucket_key(BUCKETS - 1)})")
    return int(number)


BUCKET_KEYS = [bucket_key(b) for b in range(BUCKETS)]


def group_by_bucket(learner_ids: Iterable[str]) -> dict[int, list[str]]:
    """Learners grouped by bucket, each group in the order given."""
    groups: dict[int, list[str]] = {}
    for learner_id in learner_ids:
        groups.setdefault(bucket_of(learner_id), []).append(learner_id)
    return groups
