"""Read learner updates defensively, and fast.

A trained clone is one file holding its update (:mod:`aivo_fl.ml.store.clone_file`); a clone of
the older layout has a delta file beside a manifest, read as described here. Both come through
the same entry points, chosen by the file's name.

A delta file comes from a learner's device or worker, so it is untrusted input. It is read through
:mod:`aivo_fl.ml.store.safe_files` (a regular file inside the learners' store, no link anywhere below the
root, at most the manifest's size, SHA-256 checked against the learner folder's ``manifest.json``),
then only ever parsed as safetensors (never pickle / torch.load): the header is parsed once and
checked against the expected names, dtypes and shapes, and the tensors must tile the data section
exactly, so the whole delta is one float32 vector and each tensor a view of it. Finiteness and the
L2 norm come from one float64 dot product. Every rejection carries a short, stable ``reason``
that the round records as the learner's exclusion reason.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterator, Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from aivo_fl.ml.aggregation.base import Block, Delta, block_of, vector_norm
from aivo_fl.ml.store.clone_file import CLONE_NAME, UPDATE, CloneFile, clone_layout, read_clone_file
from aivo_fl.ml.store.safe_files import (
    HASH_MISMATCH,
    MISSING,
    NOT_REGULAR,
    OUTSIDE_STORE,
    OVERSIZED,
    SYMLINK,
    TRUNCATED,
    FileRejected,
    read_verified,
)

__all__ = [
    "ABSURD_NORM",
    "HASH_MISMATCH",
    "MISSING",
    "NON_FINITE",
    "NOT_REGULAR",
    "NOT_SAFETENSORS",
    "OUTSIDE_STORE",
    "OVERSIZED",
    "SYMLINK",
    "TRUNCATED",
    "WRONG_DTYPE",
    "WRONG_NAMES",
    "WRONG_SHAPE",
    "DeltaReader",
    "DeltaRejected",
    "checked_norm",
    "iter_stacked_blocks",
    "load_delta",
    "norm_reason",
    "read_block",
]

# Stable exclusion reasons (stored in the registry; do not reword casually). The file-level ones
# (missing, outside the store, symbolic link, not a regular file, oversized, truncated, hash
# mismatch) come from safe_files.
NOT_SAFETENSORS = "not safetensors"
WRONG_NAMES = "wrong tensor names"
WRONG_SHAPE = "wrong shape"
WRONG_DTYPE = "wrong dtype"
NON_FINITE = "non-finite values"
ABSURD_NORM = "absurd norm"

EXPECTED_DTYPE = "F32"
_F32 = np.dtype("<f4")
_MAX_HEADER_BYTES = 1 << 20  # heads-only deltas have a few hundred bytes of header

# One exception type for every refusal, file-level or content-level.
DeltaRejected = FileRejected


class _Bad(Exception):
    """A refusal found by the cached layout parser; the caller adds the file's path."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason, self.detail = reason, detail


# (name, first, last element) per tensor in file order; data bytes; (first, last) per tensor in name
# order when the file's order differs from it (None: the data section is already in name order)
Layout = tuple[tuple[tuple[str, int, int], ...], int, tuple[tuple[int, int], ...] | None]


@lru_cache(maxsize=64)
def _layout(header_bytes: bytes, expected: tuple[tuple[str, tuple[int, ...]], ...]) -> Layout:
    """Validate a safetensors header against the expected tensors; returns where each one lies.

    Cached on the exact header bytes: honest deltas of one model share them byte for byte, so a
    round parses the JSON once, not once per learner. Refusals raise and are never cached.
    """
    try:
        header = json.loads(header_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _Bad(NOT_SAFETENSORS, "header is not JSON") from None
    if not isinstance(header, dict):
        raise _Bad(NOT_SAFETENSORS, "header is not a JSON object")
    header.pop("__metadata__", None)
    shapes = dict(expected)
    if header.keys() != shapes.keys():
        missing, extra = sorted(shapes.keys() - header.keys()), sorted(header.keys() - shapes.keys())
        raise _Bad(WRONG_NAMES, f"missing={missing} unexpected={extra}")
    spans = sorted((*_span(name, entry, shapes[name]), name) for name, entry in header.items())
    position = 0
    for start, stop, name in spans:
        if start != position:
            raise _Bad(NOT_SAFETENSORS, f"{name}: tensors overlap or leave a gap")
        position = stop
    size = _F32.itemsize
    elements = tuple((name, start // size, stop // size) for start, stop, name in spans)
    by_name = sorted(elements)
    reorder = None if by_name == list(elements) else tuple((first, last) for _, first, last in by_name)
    return elements, position, reorder


def _span(name: str, entry: object, shape: tuple[int, ...]) -> tuple[int, int]:
    """The entry's [start, stop) byte range, after its dtype and shape were checked."""
    if not isinstance(entry, dict):
        raise _Bad(NOT_SAFETENSORS, f"bad header entry for {name!r}")
    if entry.get("dtype") != EXPECTED_DTYPE:
        raise _Bad(WRONG_DTYPE, f"{name}: {entry.get('dtype')}, expected {EXPECTED_DTYPE}")
    given = entry.get("shape")
    if not isinstance(given, list) or tuple(given) != tuple(shape):
        raise _Bad(WRONG_SHAPE, f"{name}: {given}, expected {list(shape)}")
    offsets = entry.get("data_offsets")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
        raise _Bad(NOT_SAFETENSORS, f"{name}: bad data_offsets")
    start, stop = offsets
    if start < 0 or stop - start != math.prod(shape) * _F32.itemsize:
        raise _Bad(NOT_SAFETENSORS, f"{name}: byte range does not match its shape")
    return start, stop


def _decode(raw: bytes, expected: Mapping[str, tuple[int, ...]], path: Path | str) -> tuple[Delta, np.ndarray]:
    """Tensors (read-only float32 views) and the whole data section as one flat vector."""
    flat, layout = _decode_flat(raw, tuple(expected.items()), path)
    return {name: flat[first:last].reshape(expected[name]) for name, first, last in layout[0]}, flat


def _decode_flat(
    raw: bytes, expected: tuple[tuple[str, tuple[int, ...]], ...], path: Path | str
) -> tuple[np.ndarray, Layout]:
    """The data section as one float32 vector (read-only, a view of ``raw``), and its layout.

    The tensors must tile the data section with no gap, overlap or trailing bytes (what the
    safetensors format requires), so one ``frombuffer`` covers them all.
    """
    if len(raw) < 8:
        raise DeltaRejected(TRUNCATED if raw else NOT_SAFETENSORS, path, f"{len(raw)} bytes")
    (header_len,) = struct.unpack_from("<Q", raw)
    if header_len > _MAX_HEADER_BYTES:
        raise DeltaRejected(NOT_SAFETENSORS, path, f"header length {header_len} is implausible")
    data_start = 8 + header_len
    if data_start > len(raw):
        raise DeltaRejected(TRUNCATED, path, f"header claims {header_len} bytes, file has {len(raw) - 8}")
    try:
        layout = _layout(raw[8:data_start], expected)
    except _Bad as bad:
        raise DeltaRejected(bad.reason, path, bad.detail) from None
    data_bytes = layout[1]
    if data_bytes != len(raw) - data_start:
        reason = TRUNCATED if data_bytes > len(raw) - data_start else NOT_SAFETENSORS
        raise DeltaRejected(reason, path, f"tensors take {data_bytes} bytes, the file has {len(raw) - data_start}")
    return np.frombuffer(raw, dtype=_F32, count=data_bytes // _F32.itemsize, offset=data_start), layout


class DeltaReader:
    """Reads one round's delta files as flat vectors, every file under every check but the norm's.

    One read per file: the store, link, type, size and hash checks of :func:`read_verified`, then
    the safetensors header against the expected names, dtypes and shapes. The caller checks the
    norm (:func:`norm_reason`) where it folds the vector, so nothing is computed twice.
    """

    def __init__(self, store_root: Path, expected: Mapping[str, tuple[int, ...]]) -> None:
        self.store_root = os.fspath(store_root)
        self._expected = tuple(sorted((name, tuple(shape)) for name, shape in expected.items()))
        self._clone = clone_layout(dict(self._expected))

    def flat(self, path: Path | str) -> np.ndarray:
        """The delta's tensors in name order as one float32 vector (the layout of
        :func:`aivo_fl.ml.aggregation.base.flat_layout`); raises :class:`DeltaRejected`."""
        directory, name = os.path.split(os.fspath(path))  # strings: this runs for every learner
        if name == CLONE_NAME:
            return read_clone_file(self.store_root, directory, self._clone).update_vector()
        raw, _ = read_verified(self.store_root, directory, name)
        flat, (_, _, reorder) = _decode_flat(raw, self._expected, path)
        if reorder is None:  # safetensors writes tensors in name order: the common case
            return flat
        return np.concatenate([flat[first:last] for first, last in reorder])


def norm_reason(squared_norm: float, max_norm: float) -> str | None:
    """Why a delta of this squared L2 norm (accumulated in float64) is refused, or None."""
    if not math.isfinite(squared_norm):  # float32 squares cannot overflow float64: a NaN or inf value
        return NON_FINITE
    if squared_norm > max_norm * max_norm:
        return ABSURD_NORM
    return None


def load_delta(
    path: Path, store_root: Path, expected: Mapping[str, tuple[int, ...]], max_norm: float
) -> tuple[Delta, float]:
    """One validated delta and its L2 norm; raises :class:`DeltaRejected` with a stable reason.

    ``path`` is ``<learner folder>/clone.safetensors`` (or an older clone's ``delta.safetensors``,
    whose size and sha256 are in the folder's ``manifest.json``); the folder must lie inside
    ``store_root``.
    """
    delta, flat = _read(path, store_root, expected)
    return delta, checked_norm(delta, vector_norm(flat), path, max_norm)


def _read(
    path: Path | str, store_root: Path | str, expected: Mapping[str, tuple[int, ...]]
) -> tuple[Delta, np.ndarray]:
    """The update at ``path`` (a clone file's, or an older delta file) and its values as one vector."""
    directory, name = os.path.split(os.fspath(path))  # strings: this runs for every learner
    if name == CLONE_NAME:
        clone: CloneFile = read_clone_file(store_root, directory, clone_layout(expected))
        return clone.tensors(UPDATE), clone.update_vector()
    raw, _ = read_verified(store_root, directory, name)
    return _decode(raw, expected, path)


def checked_norm(delta: Mapping[str, np.ndarray], norm: float, path: Path, max_norm: float) -> float:
    """``norm`` (the delta's L2 norm) if finite and plausible; else :class:`DeltaRejected`."""
    if not math.isfinite(norm):
        bad = next(name for name, value in delta.items() if not np.all(np.isfinite(value)))
        raise DeltaRejected(NON_FINITE, path, bad)
    if norm > max_norm:
        raise DeltaRejected(ABSURD_NORM, path, f"L2 norm {norm:.3g} > {max_norm:.3g}")
    return norm


def read_block(path: Path, store_root: Path, shapes: Mapping[str, tuple[int, ...]], block: Block) -> np.ndarray:
    """One block of one (already validated) delta file, flattened, as float32.

    The file is read again under every check of :func:`load_delta` (it may have been replaced since
    validation: a changed file fails its hash), so a round's memory stays one file plus the block.
    """
    delta, _ = _read(path, store_root, shapes)
    out = block_of(delta, block)
    if not np.all(np.isfinite(out)):  # the manifest may have been rewritten along with the file
        raise DeltaRejected(NON_FINITE, path, "changed after validation")
    return out


def iter_stacked_blocks(
    paths: Sequence[Path],
    store_root: Path,
    shapes: Mapping[str, tuple[int, ...]],
    blocks: Sequence[Block],
    scales: Sequence[float] | None = None,
) -> Iterator[tuple[Block, np.ndarray]]:
    """Yield (block, matrix) with matrix[i] = learner i's values in that block (times scales[i]).

    Only one block of every learner is in memory at a time: learners x block size.
    """
    for block in blocks:
        matrix = np.empty((len(paths), block.size), dtype=np.float64)
        for i, path in enumerate(paths):
            matrix[i] = read_block(path, store_root, shapes, block)
            if scales is not None:
                matrix[i] *= scales[i]
        yield block, matrix
