"""Every kind of bad delta file is rejected with its stable reason; good files round-trip."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from aivo_fl.ml.aggregation.base import plan_blocks
from aivo_fl.ml.store import deltas
from aivo_fl.ml.store.deltas import DeltaRejected, iter_stacked_blocks, load_delta, read_block
from tests.ml.delta_files import vouch, write_delta, write_raw

SHAPES = {"heads.a.weight": (5, 7), "heads.a.bias": (5,), "heads.b.weight": (2, 7)}


def _delta(seed: int = 0, scale: float = 0.1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (scale * rng.standard_normal(s)).astype(np.float32) for k, s in SHAPES.items()}


def _write(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    """``<dir>/<stem>.safetensors`` becomes learner ``<stem>``'s delta in store ``<dir>``."""
    return write_delta(path.parent, path.stem, tensors)


def _raw(path: Path, data: bytes) -> Path:
    return write_raw(path.parent, path.stem, data)


def _reason(path: Path, max_norm: float = 100.0) -> str:
    with pytest.raises(DeltaRejected) as info:
        load_delta(path, path.parents[1], SHAPES, max_norm)
    return info.value.reason


def test_valid_delta_round_trips(tmp_path: Path) -> None:
    d = _delta()
    loaded, norm = load_delta(_write(tmp_path / "ok.safetensors", d), tmp_path, SHAPES, max_norm=100.0)
    assert set(loaded) == set(SHAPES)
    assert norm == pytest.approx(np.sqrt(sum(np.sum(v.astype(np.float64) ** 2) for v in d.values())), rel=1e-12)
    for k in SHAPES:
        np.testing.assert_array_equal(loaded[k], d[k])


def test_missing_file(tmp_path: Path) -> None:
    assert _reason(tmp_path / "nope" / "delta.safetensors") == deltas.MISSING


def test_truncated_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.safetensors", _delta())
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 10])
    assert _reason(path) == deltas.TRUNCATED  # shorter than its manifest says
    vouch(path)
    assert _reason(path) == deltas.TRUNCATED  # the manifest agrees, the safetensors layout does not
    path.write_bytes(raw[:5])
    assert _reason(vouch(path)) == deltas.TRUNCATED


def test_header_length_beyond_file_is_truncated_not_trusted(tmp_path: Path) -> None:
    path = _raw(tmp_path / "h.safetensors", struct.pack("<Q", 5000) + b"{}")
    assert _reason(path) == deltas.TRUNCATED


def test_huge_header_length_is_not_safetensors(tmp_path: Path) -> None:
    path = _raw(tmp_path / "h.safetensors", struct.pack("<Q", 2**62) + b"x" * 100)
    assert _reason(path) == deltas.NOT_SAFETENSORS


class _TouchOnUnpickle:
    """Unpickling this creates ``marker``: proof that a loader executed pickle code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[()]]:
        return (self.marker.touch, ())


def test_pickle_is_rejected_without_unpickling(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = _raw(tmp_path / "p.safetensors", pickle.dumps({"heads.a.weight": _TouchOnUnpickle(marker)}))
    assert _reason(path) in (deltas.NOT_SAFETENSORS, deltas.TRUNCATED)
    assert not marker.exists()


def test_random_bytes_and_empty_file(tmp_path: Path) -> None:
    path = _raw(tmp_path / "r.safetensors", np.random.default_rng(0).bytes(4096))
    assert _reason(path) in (deltas.NOT_SAFETENSORS, deltas.TRUNCATED)
    path.write_bytes(b"")
    assert _reason(vouch(path)) == deltas.NOT_SAFETENSORS


def test_header_that_is_not_json(tmp_path: Path) -> None:
    body = b"not json!!"
    path = _raw(tmp_path / "j.safetensors", struct.pack("<Q", len(body)) + body)
    assert _reason(path) == deltas.NOT_SAFETENSORS


def test_inconsistent_offsets_are_not_safetensors(tmp_path: Path) -> None:
    header = {k: {"dtype": "F32", "shape": list(s), "data_offsets": [0, 4]} for k, s in SHAPES.items()}
    raw = json.dumps(header).encode()
    path = _raw(tmp_path / "o.safetensors", struct.pack("<Q", len(raw)) + raw + b"\0" * 4096)
    assert _reason(path) == deltas.NOT_SAFETENSORS


def test_wrong_tensor_names(tmp_path: Path) -> None:
    d = _delta()
    d["trunk.0.weight"] = d.pop("heads.a.bias")
    assert _reason(_write(tmp_path / "n.safetensors", d)) == deltas.WRONG_NAMES
    d = _delta()
    del d["heads.b.weight"]
    assert _reason(_write(tmp_path / "m.safetensors", d)) == deltas.WRONG_NAMES


def test_wrong_shape(tmp_path: Path) -> None:
    d = _delta()
    d["heads.a.weight"] = np.zeros((7, 5), np.float32)
    assert _reason(_write(tmp_path / "s.safetensors", d)) == deltas.WRONG_SHAPE


def test_wrong_dtype(tmp_path: Path) -> None:
    d = _delta()
    d["heads.a.bias"] = d["heads.a.bias"].astype(np.float64)
    assert _reason(_write(tmp_path / "d.safetensors", d)) == deltas.WRONG_DTYPE


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values(tmp_path: Path, bad: float) -> None:
    d = _delta()
    d["heads.b.weight"][1, 3] = bad
    assert _reason(_write(tmp_path / "f.safetensors", d)) == deltas.NON_FINITE


def test_absurd_norm(tmp_path: Path) -> None:
    path = _write(tmp_path / "big.safetensors", _delta(scale=1e4))
    assert _reason(path, max_norm=100.0) == deltas.ABSURD_NORM
    load_delta(path, tmp_path, SHAPES, max_norm=1e9)  # the same file passes a looser limit


def test_block_reader_matches_in_memory_blocks(tmp_path: Path) -> None:
    ds = [_delta(seed) for seed in range(4)]
    paths = [_write(tmp_path / f"{i}.safetensors", d) for i, d in enumerate(ds)]
    blocks = plan_blocks(SHAPES, block_elems=9)
    assert max(b.size for b in blocks) <= 9
    seen = 0
    for block, matrix in iter_stacked_blocks(paths, tmp_path, SHAPES, blocks, scales=[1.0, 2.0, 1.0, 1.0]):
        assert matrix.shape == (4, block.size)
        for i, d in enumerate(ds):
            expected = np.concatenate(
                [d[s.name].reshape(-1, s.row_size)[s.row_start : s.row_stop].ravel() for s in block.segments]
            )
            np.testing.assert_array_equal(matrix[i], expected * (2.0 if i == 1 else 1.0))
        seen += block.size
    assert seen == sum(int(np.prod(s)) for s in SHAPES.values())


def test_block_reader_notices_a_file_changed_to_nan(tmp_path: Path) -> None:
    d = _delta()
    path = _write(tmp_path / "x.safetensors", d)
    load_delta(path, tmp_path, SHAPES, 100.0)
    d["heads.a.bias"][0] = np.nan
    _write(tmp_path / "x.safetensors", d)  # file and manifest both rewritten
    with pytest.raises(DeltaRejected) as info:
        for block in plan_blocks(SHAPES, 1000):
            read_block(path, tmp_path, SHAPES, block)
    assert info.value.reason == deltas.NON_FINITE


def test_block_reader_notices_a_file_replaced_after_validation(tmp_path: Path) -> None:
    path = _write(tmp_path / "x.safetensors", _delta())
    load_delta(path, tmp_path, SHAPES, 100.0)
    path.write_bytes(path.read_bytes()[::-1])  # manifest untouched
    with pytest.raises(DeltaRejected) as info:
        read_block(path, tmp_path, SHAPES, plan_blocks(SHAPES, 1000)[0])
    assert info.value.reason == deltas.HASH_MISMATCH
