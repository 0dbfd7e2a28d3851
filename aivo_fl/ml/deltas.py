"""Read learner delta files defensively.

A delta file comes from a learner's device or worker, so it is untrusted input. We only ever parse
it as safetensors (never pickle / torch.load), and we check the 8-byte header length against the
file size before handing anything to the safetensors parser, so a hostile length cannot make us
allocate or read garbage. Every rejection carries a short, stable ``reason`` that the round
records as the learner's exclusion reason.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load as st_load

from aivo_fl.ml.aggregation.base import Block, Delta

# Stable exclusion reasons (stored in the registry; do not reword casually).
MISSING = "missing file"
TRUNCATED = "truncated"
NOT_SAFETENSORS = "not safetensors"
WRONG_NAMES = "wrong tensor names"
WRONG_SHAPE = "wrong shape"
WRONG_DTYPE = "wrong dtype"
NON_FINITE = "non-finite values"
ABSURD_NORM = "absurd norm"

EXPECTED_DTYPE = "F32"
_MAX_HEADER_BYTES = 1 << 20  # heads-only deltas have a few hundred bytes of header
_DTYPE_BYTES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8, "I8": 1, "U8": 1, "I16": 2, "I32": 4, "I64": 8}


class DeltaRejected(Exception):
    """A delta file failed validation; ``reason`` is one of the stable constants above."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def _read_verified_bytes(path: Path, expected: Mapping[str, tuple[int, ...]]) -> bytes:
    """The whole file, after its raw header was checked against ``expected`` and the file size."""
    data_bytes = sum(math.prod(s) for s in expected.values()) * _DTYPE_BYTES[EXPECTED_DTYPE]
    try:
        size = path.stat().st_size
        if size > 8 + _MAX_HEADER_BYTES + data_bytes:  # never read an oversized file into memory
            raise DeltaRejected(NOT_SAFETENSORS, f"{size} bytes is larger than any valid delta")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DeltaRejected(MISSING, str(path)) from None
    except IsADirectoryError:
        raise DeltaRejected(NOT_SAFETENSORS, "is a directory") from None
    if len(raw) < 8:
        raise DeltaRejected(TRUNCATED if raw else NOT_SAFETENSORS, f"{len(raw)} bytes")
    (header_len,) = struct.unpack("<Q", raw[:8])
    if header_len > _MAX_HEADER_BYTES:
        raise DeltaRejected(NOT_SAFETENSORS, f"header length {header_len} is implausible")
    if header_len > len(raw) - 8:
        raise DeltaRejected(TRUNCATED, f"header claims {header_len} bytes, file has {len(raw) - 8}")
    try:
        header = json.loads(raw[8 : 8 + header_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise DeltaRejected(NOT_SAFETENSORS, "header is not JSON") from None
    if not isinstance(header, dict):
        raise DeltaRejected(NOT_SAFETENSORS, "header is not a JSON object")
    header.pop("__metadata__", None)
    if set(header) != set(expected):
        missing = sorted(set(expected) - set(header))
        extra = sorted(set(header) - set(expected))
        raise DeltaRejected(WRONG_NAMES, f"missing={missing} unexpected={extra}")
    data_len = len(raw) - 8 - header_len
    for name, entry in header.items():
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
            raise DeltaRejected(NOT_SAFETENSORS, f"bad header entry for {name!r}")
        if entry["dtype"] != EXPECTED_DTYPE:
            raise DeltaRejected(WRONG_DTYPE, f"{name}: {entry['dtype']}, expected {EXPECTED_DTYPE}")
        if not isinstance(entry["shape"], list) or tuple(entry["shape"]) != tuple(expected[name]):
            raise DeltaRejected(WRONG_SHAPE, f"{name}: {entry['shape']}, expected {list(expected[name])}")
        offsets = entry["data_offsets"]
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise DeltaRejected(NOT_SAFETENSORS, f"{name}: bad data_offsets")
        start, stop = offsets
        if stop > data_len:
            raise DeltaRejected(TRUNCATED, f"{name} ends at byte {stop}, data has {data_len}")
        if start < 0 or stop - start != math.prod(expected[name]) * _DTYPE_BYTES[EXPECTED_DTYPE]:
            raise DeltaRejected(NOT_SAFETENSORS, f"{name}: byte range does not match its shape")
    return raw


def load_delta(path: Path, expected: Mapping[str, tuple[int, ...]], max_norm: float) -> Delta:
    """Load and validate one delta; raises :class:`DeltaRejected` with a stable reason."""
    raw = _read_verified_bytes(Path(path), expected)
    try:
        delta = st_load(raw)  # safetensors' own parser re-checks the layout (overlaps, alignment)
    except Exception as exc:  # anything the parser refuses is not a valid file
        raise DeltaRejected(NOT_SAFETENSORS, type(exc).__name__) from None
    sq = 0.0
    for name, value in delta.items():
        flat = value.reshape(-1).astype(np.float64)
        if not np.all(np.isfinite(flat)):
            raise DeltaRejected(NON_FINITE, name)
        sq += float(np.dot(flat, flat))
    norm = math.sqrt(sq)
    if norm > max_norm:
        raise DeltaRejected(ABSURD_NORM, f"L2 norm {norm:.3g} > {max_norm:.3g}")
    return delta


def delta_norm(delta: Mapping[str, np.ndarray]) -> float:
    """Whole-delta L2 norm across all tensors, accumulated in float64."""
    return math.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in delta.values()))


def read_block(path: Path, block: Block) -> np.ndarray:
    """One block of one (already validated) delta file, flattened, as float32.

    ``safe_open`` memory-maps the file and ``get_slice`` copies only the requested rows, so reading
    a block costs memory proportional to the block, not the file.
    """
    parts: list[np.ndarray] = []
    with safe_open(str(path), framework="numpy") as handle:
        for seg in block.segments:
            sliced = handle.get_slice(seg.name)
            if len(sliced.get_shape()) == 0:
                parts.append(np.asarray(handle.get_tensor(seg.name)).reshape(1))
            else:
                parts.append(np.asarray(sliced[seg.row_start : seg.row_stop]).reshape(-1))
    out = np.concatenate(parts) if len(parts) > 1 else parts[0]
    if not np.all(np.isfinite(out)):  # the file may have changed since validation
        raise DeltaRejected(NON_FINITE, f"{path.name} changed after validation")
    return out


def iter_stacked_blocks(
    paths: Sequence[Path], blocks: Sequence[Block], scales: Sequence[float] | None = None
) -> Iterator[tuple[Block, np.ndarray]]:
    """Yield (block, matrix) with matrix[i] = learner i's values in that block (times scales[i]).

    Only one block of every learner is in memory at a time: learners x block size.
    """
    for block in blocks:
        matrix = np.empty((len(paths), block.size), dtype=np.float64)
        for i, path in enumerate(paths):
            matrix[i] = read_block(path, block)
            if scales is not None:
                matrix[i] *= scales[i]
        yield block, matrix
