"""A trained clone as one file: its personal tensors, its last update and its manifest.

``<learners_root>/<learner_id>/clone.safetensors`` is a plain safetensors file:

- tensors ``personal.<name>`` (the learner's own layers, what it keeps) and ``update.<name>`` (the
  delta it sends to the round), float32, back to back in name order, so the update is the tail of
  the data section;
- header metadata (``__metadata__``, strings only): ``sha256`` of the data section (every tensor),
  ``format`` and ``format_version``, and ``manifest``: the clone's manifest as JSON (kind,
  learner, source version, architecture, last session), what ``manifest.json`` holds for a clone
  that never trained.

The writer puts the tensor table first and the metadata last, ``sha256`` first in it, so every
honest clone of one model starts its header with the same bytes: the round's reader compares that
prefix (built once per model) and parses only the metadata, not the table, per file. Anything else
(another writer's order, a crafted header) takes the full parse, with duplicate keys refused, and
the same checks. The file comes from a learner's worker, so it is untrusted: it is read through
:mod:`aivo_fl.ml.store.safe_files` (regular file inside the store, no link below the root, capped)
and refused, with a stable reason, unless the data section is exactly the tensors and matches its
hash.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from aivo_fl.ml.store.safe_files import (
    BAD_MANIFEST,
    HASH_MISMATCH,
    OVERSIZED,
    TRUNCATED,
    FileRejected,
    open_store_directory,
    read_at,
)

CLONE_NAME = "clone.safetensors"
CLONE_FORMAT = "aivo-fl-clone"
CLONE_FORMAT_VERSION = "1"
PERSONAL = "personal."
UPDATE = "update."
MAX_HEADER_BYTES = 1 << 20  # real headers are a few kB (the manifest is most of it)
MAX_CLONE_BYTES = 16 << 20  # a cap for readers that do not know the shapes yet (a clone is < 1 MB)

# Stable reasons shared with aivo_fl.ml.store.deltas (recorded as exclusion reasons).
NOT_SAFETENSORS = "not safetensors"
WRONG_NAMES = "wrong tensor names"
WRONG_SHAPE = "wrong shape"
WRONG_DTYPE = "wrong dtype"
NO_UPDATE = "no update"

_F32 = np.dtype("<f4")
Shapes = Mapping[str, tuple[int, ...]]


@dataclass(slots=True)  # one per file a round reads: a plain slotted class is the cheapest to build
class CloneFile:
    """A verified clone file: its data section as one float32 vector and where each tensor lies."""

    flat: np.ndarray  # read-only view of the file's bytes
    spans: Mapping[str, tuple[int, int, tuple[int, ...]]]  # full tensor name -> (first, last element, shape)
    update: tuple[int, int] | None  # the update's elements, when they lie back to back in name order
    metadata_text: bytes | memoryview  # the header's metadata object, parsed on use (a round never needs it)
    path: str

    @property
    def manifest(self) -> dict[str, Any]:
        try:
            return _manifest(_metadata_object(bytes(self.metadata_text)))
        except _Bad as bad:
            raise FileRejected(bad.reason, self.path, bad.detail) from None

    def update_vector(self) -> np.ndarray:
        """The update's tensors in name order as one vector (a view when they lie that way, as written)."""
        if self.update is not None:
            return self.flat[self.update[0] : self.update[1]]
        spans = sorted((name, first, last) for name, (first, last, _) in self.spans.items() if name.startswith(UPDATE))
        if not spans:
            raise FileRejected(NO_UPDATE, self.path, "the clone has no update")
        return np.concatenate([self.flat[first:last] for _, first, last in spans])

    def tensors(self, prefix: str) -> dict[str, np.ndarray]:
        """The tensors named ``prefix<name>``, by ``name`` (read-only views)."""
        return {
            name[len(prefix) :]: self.flat[first:last].reshape(shape)
            for name, (first, last, shape) in self.spans.items()
            if name.startswith(prefix)
        }


@dataclass(frozen=True)
class CloneLayout:
    """What the writer puts before the hash for tensors of these shapes, and where they lie."""

    expected: tuple[tuple[str, tuple[int, ...]], ...]  # every tensor's name and shape

    prefix: bytes  # {<tensor table>,"__metadata__":{"sha256":"
    after_hash: bytes  # ","format":"aivo-fl-clone","format_version":"1","manifest":"
    spans: dict[str, tuple[int, int, tuple[int, ...]]]
    data_bytes: int
    update: tuple[int, int] | None


def clone_layout(heads: Shapes) -> CloneLayout:
    """The layout of a clone file whose personal tensors have these shapes (built once per model)."""
    return _canonical(clone_shapes(heads))


@lru_cache(maxsize=16)
def _canonical(expected: tuple[tuple[str, tuple[int, ...]], ...]) -> CloneLayout:
    spans, position = {}, 0
    for name, shape in sorted(expected):
        size = math.prod(shape)
        spans[name] = (position, position + size, shape)
        position += size
    return CloneLayout(
        expected,
        _table_prefix(expected) + b'{"sha256":"',
        f'","format":"{CLONE_FORMAT}","format_version":"{CLONE_FORMAT_VERSION}","manifest":"'.encode(),
        spans,
        position * _F32.itemsize,
        _update_span(spans),
    )


def _update_span(spans: Mapping[str, tuple[int, int, tuple[int, ...]]]) -> tuple[int, int] | None:
    ordered = sorted((name, first, last) for name, (first, last, _) in spans.items() if name.startswith(UPDATE))
    if not ordered or any(a[2] != b[1] for a, b in pairwise(ordered)):
        return None
    return ordered[0][1], ordered[-1][2]


class _Bad(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason, self.detail = reason, detail


def encode_clone(
    personal: Mapping[str, np.ndarray], update: Mapping[str, np.ndarray], manifest: dict[str, Any]
) -> bytes:
    """The file's bytes: tensors in name order, then the header with the table first, metadata last."""
    named = {PERSONAL + k: v for k, v in personal.items()} | {UPDATE + k: v for k, v in update.items()}
    arrays = [np.ascontiguousarray(named[name], dtype=_F32) for name in sorted(named)]
    shapes = {name: tuple(array.shape) for name, array in zip(sorted(named), arrays, strict=True)}
    data = b"".join(array.tobytes() for array in arrays)
    metadata = {
        "sha256": hashlib.sha256(data).hexdigest(),
        "format": CLONE_FORMAT,
        "format_version": CLONE_FORMAT_VERSION,
        "manifest": json.dumps(manifest, sort_keys=True, separators=(",", ":")),
    }
    header = _table_prefix(tuple(shapes.items())) + json.dumps(metadata, separators=(",", ":")).encode() + b"}"
    header += b" " * (-len(header) % 8)  # safetensors pads the header to 8 bytes with spaces
    return struct.pack("<Q", len(header)) + header + data


@lru_cache(maxsize=16)
def _table_prefix(shapes: tuple[tuple[str, tuple[int, ...]], ...]) -> bytes:
    """``{<tensor table>,"__metadata__":`` for tensors of these shapes (name order, back to back)."""
    table, position = {}, 0
    for name, shape in sorted(shapes):
        size = math.prod(shape) * _F32.itemsize
        table[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [position, position + size]}
        position += size
    return json.dumps(table, separators=(",", ":")).encode()[:-1] + b',"__metadata__":'


def clone_shapes(heads: Shapes) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """Every tensor of a clone file whose personal tensors have these shapes."""
    named = [(prefix + name, tuple(shape)) for prefix in (PERSONAL, UPDATE) for name, shape in heads.items()]
    return tuple(sorted(named))


def read_clone(root: Path | str, directory: Path | str, heads: Shapes | None = None) -> CloneFile:
    """``directory/clone.safetensors``, verified; with ``heads`` (the model's personal shapes), checked
    against them too. Raises :class:`FileRejected` with a stable reason (MISSING if there is none)."""
    return read_clone_file(root, directory, clone_layout(heads) if heads is not None else None)


def read_clone_file(root: Path | str, directory: Path | str, layout: CloneLayout | None) -> CloneFile:
    """:func:`read_clone` with the file's layout already built (:func:`clone_layout`)."""
    limit = MAX_CLONE_BYTES if layout is None else 8 + MAX_HEADER_BYTES + layout.data_bytes
    dir_fd = open_store_directory(root, directory)
    try:
        raw = read_at(dir_fd, CLONE_NAME, limit, root, directory)
    finally:
        os.close(dir_fd)
    return parse_clone(raw, layout, os.path.join(directory, CLONE_NAME))


def parse_clone(raw: bytes, layout: CloneLayout | None, path: str) -> CloneFile:
    """Check and decode a clone file's bytes (see the module docstring); raises :class:`FileRejected`."""
    try:
        return _parse(raw, layout, path)
    except _Bad as bad:
        raise FileRejected(bad.reason, path, bad.detail) from None


def _parse(raw: bytes, canonical: CloneLayout | None, path: str) -> CloneFile:
    if len(raw) < 8:
        raise _Bad(TRUNCATED, f"{len(raw)} bytes, shorter than a safetensors header")
    (header_len,) = struct.unpack_from("<Q", raw)
    if header_len > MAX_HEADER_BYTES:
        raise _Bad(NOT_SAFETENSORS, f"header length {header_len} is implausible")
    data_start = 8 + header_len
    if data_start > len(raw):
        raise _Bad(TRUNCATED, f"header claims {header_len} bytes, the file has {len(raw) - 8}")
    if canonical is not None and _is_canonical(raw, data_start, canonical):
        # The exact table of these shapes, then the hash, the format and a string closed by "}}:
        # the tensors are pinned byte for byte, nothing to parse. The manifest text is parsed by
        # whoever reads the manifest.
        at = 8 + len(canonical.prefix)
        claimed, spans, update = raw[at : at + 64], canonical.spans, canonical.update
        end = data_start - 1  # the header's closing brace, after at most 7 spaces of padding
        while raw[end] == 0x20:
            end -= 1
        metadata_text = memoryview(raw)[at - len(b'{"sha256":"') : end]
        data_bytes = canonical.data_bytes
    else:
        expected = canonical.expected if canonical is not None else None
        claimed, spans, metadata_text = _full_parse(raw[8:data_start], expected)
        update, data_bytes = _update_span(spans), max((s[1] for s in spans.values()), default=0) * _F32.itemsize
    if data_bytes != len(raw) - data_start:
        reason = TRUNCATED if data_bytes > len(raw) - data_start else OVERSIZED
        raise _Bad(reason, f"tensors take {data_bytes} bytes, the file has {len(raw) - data_start}")
    actual = hashlib.sha256(memoryview(raw)[data_start:]).hexdigest().encode()
    if actual != claimed:
        raise _Bad(HASH_MISMATCH, f"sha256 {actual[:12].decode()}…, header says {claimed[:12]!r}…")
    flat = np.frombuffer(raw, dtype=_F32, count=data_bytes // _F32.itemsize, offset=data_start)
    return CloneFile(flat, spans, update, metadata_text, path)


def _is_canonical(raw: bytes, data_start: int, canonical: CloneLayout) -> bool:
    after = 8 + len(canonical.prefix) + 64
    if not (raw.startswith(canonical.prefix, 8) and raw.startswith(canonical.after_hash, after)):
        return False
    # The header ends with the manifest string and two braces, then at most 7 spaces of padding.
    return raw[max(after, data_start - 10) : data_start].rstrip(b" ").endswith(b'"}}')


def _full_parse(
    header: bytes, expected: tuple[tuple[str, tuple[int, ...]], ...] | None
) -> tuple[bytes, dict[str, tuple[int, int, tuple[int, ...]]], bytes]:
    """Any other header: parsed whole (duplicate keys refused) and checked; (claimed hash, spans,
    metadata text)."""
    table = _full_header(header)
    metadata = table.pop("__metadata__", None)
    if not isinstance(metadata, dict):
        raise _Bad(BAD_MANIFEST, "no __metadata__")
    spans = _checked_table(table, expected)
    if metadata.get("format") != CLONE_FORMAT or metadata.get("format_version") != CLONE_FORMAT_VERSION:
        raise _Bad(
            BAD_MANIFEST,
            f"unsupported format {metadata.get('format')!r} v{metadata.get('format_version')!r}, "
            f"expected {CLONE_FORMAT!r} v{CLONE_FORMAT_VERSION}",
        )
    claimed = metadata.get("sha256")
    return (claimed if isinstance(claimed, str) else "").encode(), spans, json.dumps(metadata).encode()


def _metadata_object(text: bytes) -> dict[str, Any]:
    metadata = _strict_json(text)
    if not isinstance(metadata, dict):
        raise _Bad(BAD_MANIFEST, "__metadata__ is not an object")
    return metadata


def _full_header(header: bytes) -> dict[str, Any]:
    parsed = _strict_json(header)
    if not isinstance(parsed, dict):
        raise _Bad(NOT_SAFETENSORS, "header is not a JSON object")
    return parsed


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _Bad(NOT_SAFETENSORS, "duplicate key in the header")
    return out


def _strict_json(text: bytes) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _Bad(NOT_SAFETENSORS, "header is not JSON") from None


def _checked_table(
    table: dict[str, Any], expected: tuple[tuple[str, tuple[int, ...]], ...] | None
) -> dict[str, tuple[int, int, tuple[int, ...]]]:
    """Each tensor's element span, after its dtype, shape and offsets were checked; the tensors must
    tile the data section; personal and update tensors must pair up (same names, same shapes)."""
    spans = {name: _span(name, entry) for name, entry in table.items()}
    ordered = sorted((first, last, name) for name, (first, last, _) in spans.items())
    position = 0
    for first, last, name in ordered:
        if first != position:
            raise _Bad(NOT_SAFETENSORS, f"{name}: tensors overlap or leave a gap")
        position = last
    found = {name: shape for name, (_, _, shape) in spans.items()}
    if expected is None:  # the personal tensors say what the update must be
        personal = {k[len(PERSONAL) :]: s for k, s in found.items() if k.startswith(PERSONAL)}
        if not personal or found.keys() - {PERSONAL + k for k in personal} - {UPDATE + k for k in personal}:
            raise _Bad(WRONG_NAMES, f"tensors {sorted(found)}")
        expected = clone_shapes(personal)
    _compare(found, dict(expected))
    return spans


def _compare(found: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]) -> None:
    """``found`` must be ``expected``, or its personal tensors alone (a clone rebased since it trained
    keeps no update: :meth:`CloneFile.update_vector` refuses it as NO_UPDATE)."""
    wanted = expected.keys()
    if not any(k.startswith(UPDATE) for k in found):
        wanted = {k for k in wanted if k.startswith(PERSONAL)}
    if found.keys() != wanted:
        missing, extra = sorted(wanted - found.keys()), sorted(found.keys() - wanted)
        raise _Bad(WRONG_NAMES, f"missing={missing} unexpected={extra}")
    for name in wanted:
        if found[name] != expected[name]:
            raise _Bad(WRONG_SHAPE, f"{name}: {list(found[name])}, expected {list(expected[name])}")


def _span(name: str, entry: object) -> tuple[int, int, tuple[int, ...]]:
    if not isinstance(entry, dict):
        raise _Bad(NOT_SAFETENSORS, f"bad header entry for {name!r}")
    if entry.get("dtype") != "F32":
        raise _Bad(WRONG_DTYPE, f"{name}: {entry.get('dtype')}, expected F32")
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
        raise _Bad(NOT_SAFETENSORS, f"{name}: bad shape")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
        raise _Bad(NOT_SAFETENSORS, f"{name}: bad data_offsets")
    start, stop = offsets
    size = math.prod(shape) * _F32.itemsize
    if start < 0 or start % _F32.itemsize or stop - start != size:
        raise _Bad(NOT_SAFETENSORS, f"{name}: byte range does not match its shape")
    return start // _F32.itemsize, stop // _F32.itemsize, tuple(shape)


def _manifest(metadata: dict[str, Any]) -> dict[str, Any]:
    text = metadata.get("manifest")
    try:
        manifest = json.loads(text) if isinstance(text, str) else None
    except json.JSONDecodeError:
        manifest = None
    if not isinstance(manifest, dict):
        raise _Bad(BAD_MANIFEST, "metadata has no manifest object")
    return manifest
