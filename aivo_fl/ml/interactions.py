"""The app's interactions as untrusted input: every row decoded and checked on its own.

aivo-fl does not write the rows it learns from (the AIVO app does), so a row is used only when
its 256 features decode from a supported encoding (packed little-endian float32 bytes, a numeric
array, a JSON array), are finite and within ±FEATURE_LIMIT, its label for every head is an
integer in that head's range (HEAD_CLASSES) and its timestamp is present. Any other row is
skipped and counted under one of ROW_PROBLEMS; the learner's other rows are still used, and
nothing about one learner's rows touches another learner's.

Out-of-range features are skipped, not clipped: the model's inputs are standardized (the
simulated ones stay within ±10), so a value past ±FEATURE_LIMIT is a fault of the writer, and a
clipped copy would be a made-up measurement trained on silently.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aivo_fl.ml.samples import HEAD_CLASSES, NUM_FEATURES

# Largest magnitude of a usable feature (documented in docs/operations.md, "The app's interactions").
FEATURE_LIMIT = 100.0

# Why a row is skipped, in the order the checks run (a row counts under the first that fails).
FEATURES_ENCODING = "features_encoding"  # not 256 numbers in a supported encoding
FEATURES_NON_FINITE = "features_non_finite"  # NaN or ±infinity
FEATURES_OUT_OF_RANGE = "features_out_of_range"  # finite, beyond ±FEATURE_LIMIT
LABEL_OUT_OF_RANGE = "label_out_of_range"  # a head's label missing, not an integer or outside its classes
TIMESTAMP_MISSING = "timestamp_missing"
ROW_PROBLEMS = (FEATURES_ENCODING, FEATURES_NON_FINITE, FEATURES_OUT_OF_RANGE, LABEL_OUT_OF_RANGE, TIMESTAMP_MISSING)

HEADS = tuple(HEAD_CLASSES)


class BadFeatures(ValueError):
    """A features value that is not 256 numbers in a supported encoding."""


@dataclass(frozen=True)
class CheckedInteractions:
    """A learner's usable rows, in the order given, and how many were skipped for which reason."""

    features: np.ndarray  # (n, NUM_FEATURES) float32, finite, within ±FEATURE_LIMIT
    targets: dict[str, np.ndarray]  # head -> (n,) int64 within the head's classes
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> rows skipped

    def __len__(self) -> int:
        return int(self.features.shape[0])


def decode_feature_row(value: Any) -> np.ndarray:
    """(256,) float32 from one stored feature vector, or BadFeatures saying why not. The numbers
    are not checked here (see `check_rows`): a NaN decodes."""
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        if len(raw) != NUM_FEATURES * 4:
            raise BadFeatures(f"{len(raw)} bytes, expected {NUM_FEATURES} packed float32s ({NUM_FEATURES * 4} bytes)")
        return np.frombuffer(raw, dtype="<f4").astype(np.float32)
    if isinstance(value, str):  # a JSON array in a text column (or a driver that leaves JSON as text)
        try:
            value = json.loads(value)
        except (ValueError, RecursionError) as exc:
            raise BadFeatures(f"not a JSON array: {type(exc).__name__}") from None
    if not isinstance(value, list | tuple | np.ndarray) or isinstance(value, str):
        raise BadFeatures(f"a {type(value).__name__}, expected bytes or an array of {NUM_FEATURES} numbers")
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow to inf is caught as non-finite
            array = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError, OverflowError):
        raise BadFeatures(f"not an array of {NUM_FEATURES} numbers") from None
    if array.shape != (NUM_FEATURES,):
        raise BadFeatures(f"shape {array.shape}, expected ({NUM_FEATURES},)")
    return array


def _label_ok(value: Any, classes: int) -> bool:
    # An integer class (a boolean column, as the app's `correct`, reads as 0/1); NULL, a float or a
    # string is not a label.
    return isinstance(value, int | np.integer) and 0 <= int(value) < classes


def check_rows(rows: Iterable[Sequence[Any]]) -> CheckedInteractions:
    """The usable rows of (features, difficulty, modality, success, createdAt) tuples; never raises
    for what a row holds."""
    features, labels, skipped = [], [], Counter[str]()
    for row in rows:
        try:
            vector = decode_feature_row(row[0])
        except BadFeatures:
            skipped[FEATURES_ENCODING] += 1
            continue
        problem = _row_problem(vector, row)
        if problem is not None:
            skipped[problem] += 1
            continue
        features.append(vector)
        labels.append([int(row[1 + i]) for i in range(len(HEADS))])
    matrix = np.stack(features) if features else np.zeros((0, NUM_FEATURES), dtype=np.float32)
    targets = np.asarray(labels, dtype=np.int64).reshape(len(labels), len(HEADS))
    return CheckedInteractions(
        features=matrix, targets={h: targets[:, i].copy() for i, h in enumerate(HEADS)}, skipped=dict(skipped)
    )


def _row_problem(vector: np.ndarray, row: Sequence[Any]) -> str | None:
    if not np.isfinite(vector).all():
        return FEATURES_NON_FINITE
    if np.abs(vector).max() > FEATURE_LIMIT:
        return FEATURES_OUT_OF_RANGE
    if len(row) < 2 + len(HEADS) or not all(
        _label_ok(row[1 + i], classes) for i, classes in enumerate(HEAD_CLASSES.values())
    ):
        return LABEL_OUT_OF_RANGE
    if row[1 + len(HEADS)] is None:
        return TIMESTAMP_MISSING
    return None


def add_counts(total: dict[str, int], more: dict[str, int]) -> None:
    """Add `more`'s counts by reason into `total`."""
    for reason, count in more.items():
        total[reason] = total.get(reason, 0) + count


def describe_skipped(skipped: dict[str, int]) -> str:
    """'3 features_non_finite, 1 label_out_of_range' in ROW_PROBLEMS order; '' when none."""
    return ", ".join(f"{skipped[r]} {r}" for r in ROW_PROBLEMS if skipped.get(r))
