"""Which learner buckets a cloning or training run covers: a range in its `aivo/buckets` tag.

The learner assets are not Dagster-partitioned. A run's work list is "every learner of these
buckets that needs the work when the run starts", named by a contiguous range of hash buckets
(`aivo_fl.ml.store.learner_buckets`), so no learner id reaches Dagster's storage, and a run costs
the same dozen events whatever the number of learners or buckets it covers (a partition range
writes an event per partition: 1,024 for a run over every bucket, ~85 ms each on a busy SQLite
instance). A run without the tag (launched from the UI's Materialize button) covers every bucket.
"""

from __future__ import annotations

from collections.abc import Mapping

from aivo_fl.defs.run_tags import BUCKETS_TAG, bucket_range
from aivo_fl.ml.store.learner_buckets import BUCKETS, bucket_index, bucket_key

EVERY_BUCKET = range(BUCKETS)


def bucket_span_tag(span: range) -> dict[str, str]:
    """The tag that gives a run its buckets: `{"aivo/buckets": "bucket-0003..bucket-0047"}`."""
    return {BUCKETS_TAG: bucket_range(bucket_key(span[0]), bucket_key(span[-1]))}


def parse_bucket_span(text: str) -> range:
    """`bucket-0003..bucket-0047` (or one bucket's key) as the range of bucket numbers; anything else is refused."""
    start, _, end = text.partition("..")
    first, last = bucket_index(start), bucket_index(end or start)
    if last < first:
        raise ValueError(f"{text!r} is not a range of learner buckets (its end comes before its start)")
    return range(first, last + 1)


def run_bucket_span(tags: Mapping[str, str]) -> range:
    """The buckets a run of the learner assets covers: its tag's range, else every bucket."""
    text = tags.get(BUCKETS_TAG)
    return parse_bucket_span(text) if text else EVERY_BUCKET
