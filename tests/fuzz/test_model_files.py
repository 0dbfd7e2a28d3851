"""The safetensors and manifest reader: whatever bytes lie in a model folder, a load gives verified
tensors or one ArtifactError line with a reason, never another exception."""

from __future__ import annotations

import hashlib
import json
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from aivo_fl.ml.store.artifacts import ArtifactError, encode_tensors, load_artifact
from aivo_fl.ml.store.deltas import load_delta

NAME = "delta.safetensors"
SHAPES = {"difficulty.weight": (5, 4), "difficulty.bias": (5,)}


def _header(header: Any, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


# Weights: valid files, valid files cut or flipped, hand-made headers, garbage.
VALID = st.lists(
    st.floats(width=32, allow_nan=True, allow_infinity=True, allow_subnormal=False), min_size=25, max_size=25
).map(
    lambda v: encode_tensors(
        {"difficulty.weight": np.asarray(v[:20], np.float32).reshape(5, 4), "difficulty.bias": np.asarray(v[20:])}
    )
)
HEADERS = st.dictionaries(
    st.sampled_from([*SHAPES, "__metadata__", "x"]),
    st.fixed_dictionaries(
        {},
        optional={
            "dtype": st.sampled_from(["F32", "F64", "I64", "BOOL", "??"]),
            "shape": st.lists(st.integers(-2, 6), max_size=3),
            "data_offsets": st.lists(st.integers(-8, 200), max_size=3),
        },
    )
    | st.text(max_size=4),
    max_size=3,
)
WEIGHTS = st.one_of(
    VALID,
    st.tuples(VALID, st.integers(0, 200)).map(lambda t: t[0][: t[1]]),
    st.tuples(VALID, st.integers(0, 10_000)).map(
        lambda t: t[0][: t[1] % len(t[0])] + bytes([t[0][t[1] % len(t[0])] ^ 0xFF]) + t[0][t[1] % len(t[0]) + 1 :]
    ),
    st.tuples(HEADERS, st.binary(max_size=120)).map(lambda t: _header(*t)),
    st.binary(max_size=200),
)


def _record(data: bytes) -> dict[str, Any]:
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


# Manifests: right, with a wrong record, as arbitrary JSON, or not JSON at all.
RECORD_VALUES = st.none() | st.integers(-5, 10**6) | st.text(max_size=70) | st.booleans()
MANIFESTS = st.one_of(
    st.just("right"),
    st.fixed_dictionaries({"sha256": RECORD_VALUES, "bytes": RECORD_VALUES}).map(lambda r: {"files": {NAME: r}}),
    st.recursive(
        st.none() | st.integers() | st.text(max_size=5),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["files", NAME, "x"]), inner),
    ),
    st.binary(max_size=100),
)


def _write(folder: Path, weights: bytes, manifest: Any) -> None:
    folder.mkdir(parents=True)
    (folder / NAME).write_bytes(weights)
    if manifest == "right":
        manifest = {"format": "aivo-fl-artifact", "format_version": 1, "files": {NAME: _record(weights)}}
    raw = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
    (folder / "manifest.json").write_bytes(raw)


def _one_line_refusal(exc: ArtifactError) -> None:
    message = str(exc)
    assert message and "\n" not in message


@given(WEIGHTS, MANIFESTS)
def test_a_model_folder_loads_verified_or_is_refused_in_one_line(weights: bytes, manifest: Any) -> None:
    with tempfile.TemporaryDirectory() as root:
        folder = Path(root) / "learner-1"
        _write(folder, weights, manifest)
        try:
            tensors, _ = load_artifact(Path(root), folder, NAME)
        except ArtifactError as exc:
            _one_line_refusal(exc)
        else:
            assert all(isinstance(t, np.ndarray) for t in tensors.values())


@given(WEIGHTS, MANIFESTS)
def test_a_delta_is_finite_and_of_the_expected_shape_or_refused_with_a_reason(weights: bytes, manifest: Any) -> None:
    with tempfile.TemporaryDirectory() as root:
        folder = Path(root) / "learner-1"
        _write(folder, weights, manifest)
        try:
            delta, norm = load_delta(folder / NAME, Path(root), SHAPES, max_norm=1e6)
        except ArtifactError as exc:
            _one_line_refusal(exc)
            assert getattr(exc, "reason", None), exc  # the round records it as the exclusion reason
        else:
            assert {k: tuple(v.shape) for k, v in delta.items()} == SHAPES
            assert all(np.isfinite(v).all() for v in delta.values()) and np.isfinite(norm)
