"""The interaction decoder and validator never raise for what a row holds, and pass on only rows
that are finite, in range and labelled within each head's classes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from aivo_fl.ml.interactions import FEATURE_LIMIT, ROW_PROBLEMS, BadFeatures, check_rows, decode_feature_row
from aivo_fl.ml.samples import HEAD_CLASSES, NUM_FEATURES

ANY_FLOAT = st.floats(allow_nan=True, allow_infinity=True, width=32, allow_subnormal=False)
IN_RANGE = st.floats(-FEATURE_LIMIT, FEATURE_LIMIT, width=32, allow_subnormal=False)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_subnormal=False)
    | st.text(max_size=8)
    | st.binary(max_size=8)
)

# Features as the app may store them: packed bytes (right or wrong length, any bit pattern), arrays
# of numbers (right or wrong length), JSON text (valid or not), or something else altogether.
PACKED = st.lists(ANY_FLOAT | IN_RANGE, min_size=NUM_FEATURES, max_size=NUM_FEATURES).map(
    lambda v: np.asarray(v, dtype="<f4").tobytes()
)
FEATURES = st.one_of(
    PACKED,
    st.binary(min_size=NUM_FEATURES * 4, max_size=NUM_FEATURES * 4),
    st.binary(max_size=2 * NUM_FEATURES * 4),
    st.lists(IN_RANGE, min_size=NUM_FEATURES, max_size=NUM_FEATURES),
    st.lists(ANY_FLOAT | st.integers() | st.text(max_size=4), min_size=0, max_size=NUM_FEATURES + 2),
    st.lists(IN_RANGE, min_size=NUM_FEATURES, max_size=NUM_FEATURES).map(json.dumps),
    st.text(max_size=40),
    st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner)),
)
LABELS = st.integers(-3, 7) | st.none() | st.booleans() | st.floats(allow_subnormal=False) | st.text(max_size=3)
WHEN = st.none() | st.just(datetime(2026, 12, 1, tzinfo=UTC))
ROW = st.tuples(FEATURES, LABELS, LABELS, LABELS, WHEN)


@given(st.lists(ROW, max_size=12))
def test_every_row_is_used_or_counted_and_what_is_used_is_sound(rows: list[tuple[Any, ...]]) -> None:
    checked = check_rows(rows)

    assert len(checked) + sum(checked.skipped.values()) == len(rows)
    assert set(checked.skipped) <= set(ROW_PROBLEMS)
    assert checked.features.shape == (len(checked), NUM_FEATURES) and checked.features.dtype == np.float32
    assert np.isfinite(checked.features).all()
    assert (np.abs(checked.features) <= FEATURE_LIMIT).all()
    for head, classes in HEAD_CLASSES.items():
        assert checked.targets[head].shape == (len(checked),)
        assert ((checked.targets[head] >= 0) & (checked.targets[head] < classes)).all()


@given(FEATURES)
def test_a_features_value_decodes_to_256_floats_or_is_refused_in_one_line(value: Any) -> None:
    try:
        vector = decode_feature_row(value)
    except BadFeatures as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        assert vector.shape == (NUM_FEATURES,) and vector.dtype == np.float32


@given(st.lists(IN_RANGE, min_size=NUM_FEATURES, max_size=NUM_FEATURES), st.integers(0, 1), st.integers(0, 3))
def test_a_good_row_is_kept_in_every_encoding(vector: list[float], success: int, modality: int) -> None:
    when = datetime(2026, 12, 1, tzinfo=UTC)
    packed = np.asarray(vector, dtype="<f4")
    rows = [(encoded, 4, modality, success, when) for encoded in (packed.tobytes(), vector, json.dumps(vector))]

    checked = check_rows(rows)

    assert checked.skipped == {}
    for row in checked.features:
        np.testing.assert_array_equal(row, packed)
