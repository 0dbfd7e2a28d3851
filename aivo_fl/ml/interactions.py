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
_CLASSES = tuple(HEAD_CLASSES.values())


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
    for what a row holds. Packed rows (aivo-fl's own table) are decoded and checked as one array."""
    rows = list(rows)
    features, problem = _decoded(rows)
    ok = problem == 0
    finite = np.isfinite(features).all(axis=1)
    problem[ok & ~finite] = ROW_PROBLEMS.index(FEATURES_NON_FINITE) + 1
    ok &= finite
    within = (np.abs(np.where(finite[:, None], features, 0.0)) <= FEATURE_LIMIT).all(axis=1)
    problem[ok & ~within] = ROW_PROBLEMS.index(FEATURES_OUT_OF_RANGE) + 1
    ok &= within
    sound = np.flatnonzero(ok).tolist()
    late = [_late_problem(rows[i]) for i in sound]
    for i, reason in zip(sound, late, strict=True):
        if reason is not None:
            problem[i], ok[i] = ROW_PROBLEMS.index(reason) + 1, False
    kept = np.flatnonzero(ok)
    labels = np.array([rows[i][1 : 1 + len(HEADS)] for i in kept.tolist()], dtype=np.int64)
    labels = labels.reshape(len(kept), len(HEADS))
    counts = np.bincount(problem, minlength=len(ROW_PROBLEMS) + 1)[1:]
    return CheckedInteractions(
        features=features[kept],
        targets={h: labels[:, i].copy() for i, h in enumerate(HEADS)},
        skipped={reason: int(c) for reason, c in zip(ROW_PROBLEMS, counts, strict=True) if c},
    )


def _decoded(rows: Sequence[Sequence[Any]]) -> tuple[np.ndarray, np.ndarray]:
    """(n, 256) float32 features (zeros where a row does not decode) and each row's problem so far
    (0 none, else 1 + its index in ROW_PROBLEMS)."""
    features = np.zeros((len(rows), NUM_FEATURES), dtype=np.float32)
    problem = np.zeros(len(rows), dtype=np.int64)
    packed_at, packed = [], []
    for i, row in enumerate(rows):
        value = row[0] if len(row) else None
        size = value.nbytes if isinstance(value, memoryview) else len(value) if isinstance(value, bytes) else -1
        if size == NUM_FEATURES * 4:
            packed_at.append(i)
            packed.append(bytes(value))
            continue
        try:
            features[i] = decode_feature_row(value)
        except BadFeatures:
            problem[i] = ROW_PROBLEMS.index(FEATURES_ENCODING) + 1
    if packed:
        features[packed_at] = np.frombuffer(b"".join(packed), dtype="<f4").reshape(len(packed), NUM_FEATURES)
    return features, problem


def _late_problem(row: Sequence[Any]) -> str | None:
    """What is wrong with a row whose features are sound: its labels or its timestamp."""
    if len(row) < 2 + len(HEADS):
        return LABEL_OUT_OF_RANGE
    for value, classes in zip(row[1 : 1 + len(HEADS)], _CLASSES, strict=True):
        if not (type(value) is int and 0 <= value < classes) and not _label_ok(value, classes):
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
