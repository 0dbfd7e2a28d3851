"""Learner buckets: stable across processes, total, reasonably even, keys round-trip."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from aivo_fl.ml.store.learner_buckets import BUCKET_KEYS, BUCKETS, bucket_index, bucket_key, bucket_of, group_by_bucket

IDS = [f"learner-{i:06d}" for i in range(2_000)] + ["cuid_clx9a0001", "ü-ñ", "", "x" * 128, "a b"]


def test_the_same_in_another_process_whatever_its_hash_seed() -> None:
    # Python's own hash() differs per process (PYTHONHASHSEED); the bucket must not.
    code = (
        "import json, sys; from aivo_fl.ml.store.learner_buckets import bucket_of; "
        "print(json.dumps([bucket_of(i) for i in json.load(sys.stdin)]))"
    )
    for seed in ("1", "2"):
        child = subprocess.run(
            [sys.executable, "-c", code],
            input=json.dumps(IDS),
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
            check=True,
        )
        assert json.loads(child.stdout) == [bucket_of(i) for i in IDS]


def test_pinned_values_so_a_change_of_function_cannot_pass_unnoticed() -> None:
    # Changing the hash or BUCKETS would move every learner to another bucket (another partition).
    assert BUCKETS == 1_024
    pinned = {"learner-000000": 754, "learner-000001": 177, "cuid_clx9a0001": 453, "": 20}
    assert {i: bucket_of(i) for i in pinned} == pinned


def test_total_every_id_in_exactly_one_bucket() -> None:
    groups = group_by_bucket(IDS)
    assert all(0 <= b < BUCKETS for b in groups)
    flattened = [i for members in groups.values() for i in members]
    assert sorted(flattened) == sorted(IDS)  # nobody lost, nobody twice
    assert all(bucket_of(i) == b for b, members in groups.items() for i in members)


def test_reasonably_even_over_100k_ids() -> None:
    counts = Counter(bucket_of(f"learner-{i:06d}") for i in range(100_000))
    assert len(counts) == BUCKETS  # every bucket used
    mean = 100_000 / BUCKETS  # 97.7; a fair hash gives a standard deviation of about 9.9
    assert mean * 0.6 < min(counts.values()) and max(counts.values()) < mean * 1.4
    chi_square = sum((n - mean) ** 2 / mean for n in counts.values())
    assert chi_square < BUCKETS + 5 * (2 * BUCKETS) ** 0.5  # 5 standard deviations above its mean


def test_keys_sort_in_bucket_order_and_round_trip() -> None:
    assert BUCKET_KEYS[0] == "bucket-0000" and BUCKET_KEYS[-1] == "bucket-1023"
    assert sorted(BUCKET_KEYS) == BUCKET_KEYS
    assert [bucket_index(k) for k in BUCKET_KEYS] == list(range(BUCKETS))
    assert bucket_key(7) == "bucket-0007"


@pytest.mark.parametrize("bad", ["bucket-1024", "bucket-12", "bucket-00a1", "learner-0001", "bucket--001"])
def test_anything_else_is_not_a_bucket(bad: str) -> None:
    with pytest.raises(ValueError, match="not a learner bucket"):
        bucket_index(bad)


def test_bucket_numbers_outside_the_range_are_refused() -> None:
    for bad in (-1, BUCKETS):
        with pytest.raises(ValueError, match="outside"):
            bucket_key(bad)
