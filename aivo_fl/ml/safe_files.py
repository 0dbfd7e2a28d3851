"""Read a model file that may be hostile: a regular file inside its store, capped, hash-verified.

Every model file the project reads (main versions, clones, deltas) comes through here. A file is
read only if

- its path lies inside the store root (checked lexically, so ``..`` cannot climb out), and no
  component below the root is a symbolic link: directories are opened one by one with
  ``O_NOFOLLOW`` relative to their parent, so nothing can be swapped for a link between check and
  use (the root itself may be a link: that is the operator's choice);
- it is a regular file: it is opened with ``O_NONBLOCK`` (a FIFO cannot block) and refused on
  ``fstat`` before a single byte is read (so ``/dev/zero`` or a FIFO never reach ``read``);
- it is no larger than expected: at most ``limit + 1`` bytes are ever read;
- for weights, its size and SHA-256 match its manifest.

Every refusal is a :class:`FileRejected` whose ``reason`` is a short stable string (a round
records it as the learner's exclusion reason).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
FORMAT_NAME = "aivo-fl-artifact"
FORMAT_VERSION = 1
MAX_MANIFEST_BYTES = 1 << 20  # real manifests are a few kB

# Stable reasons (stored in the registry as exclusion reasons; do not reword casually).
OUTSIDE_STORE = "outside the store"
SYMLINK = "symbolic link"
NOT_REGULAR = "not a regular file"
NOT_DIRECTORY = "not a directory"
MISSING = "missing file"
UNREADABLE = "unreadable"
OVERSIZED = "oversized"
TRUNCATED = "truncated"
HASH_MISMATCH = "hash mismatch"
BAD_MANIFEST = "bad manifest"
NOT_IN_MANIFEST = "not in manifest"

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | _CLOEXEC


class ArtifactError(Exception):
    """An artifact is missing, corrupt, truncated, hostile, or not in the expected format."""


class FileRejected(ArtifactError):
    """A file was refused; ``reason`` is one of the stable constants of this module (or deltas')."""

    def __init__(self, reason: str, path: Path | str, detail: str = "") -> None:
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))
        self.reason = reason
        self.path = str(path)
        self.detail = detail


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _parts_below(root: Path, path: Path) -> tuple[str, ...]:
    """The components of ``path`` below ``root``, or OUTSIDE_STORE. Lexical: nothing is followed."""
    absolute = Path(os.path.abspath(path))
    for base in (Path(os.path.abspath(root)), Path(os.path.realpath(root))):
        if absolute == base or absolute.is_relative_to(base):
            return absolute.relative_to(base).parts
    raise FileRejected(OUTSIDE_STORE, path, f"store is {root}")


def _refusal(exc: OSError, root: Path, dir_fd: int, name: str, shown: Path) -> FileRejected:
    """Turn an ``open`` failure into its stable reason (a link says where it points)."""
    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
        try:
            target = os.readlink(name, dir_fd=dir_fd)
        except OSError:
            return FileRejected(NOT_DIRECTORY, shown)
        inside = Path(os.path.realpath(shown)).is_relative_to(os.path.realpath(root))
        return FileRejected(SYMLINK if inside else OUTSIDE_STORE, shown, f"symbolic link to {target}")
    if exc.errno == errno.ENOENT:
        return FileRejected(MISSING, shown)
    return FileRejected(UNREADABLE, shown, exc.strerror or type(exc).__name__)


@contextmanager
def store_directory(root: Path, directory: Path) -> Iterator[int]:
    """An fd of ``directory``, opened component by component below ``root`` without following links."""
    parts = _parts_below(root, directory)
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
    except OSError as exc:
        raise FileRejected(MISSING if exc.errno == errno.ENOENT else UNREADABLE, root, "store root") from None
    shown = Path(root)
    try:
        for part in parts:
            shown = shown / part
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                raise _refusal(exc, root, fd, part, shown) from None
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def read_at(dir_fd: int, name: str, limit: int, root: Path, shown: Path) -> bytes:
    """At most ``limit`` bytes of regular file ``name`` in ``dir_fd``; more is OVERSIZED."""
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        raise _refusal(exc, root, dir_fd, name, shown) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):  # before any read: a FIFO or a device never gets read
            raise FileRejected(NOT_REGULAR, shown, _kind(mode))
        chunks = []
        remaining = limit + 1
        while remaining > 0:
            chunk = os.read(fd, remaining)
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
    except OSError as exc:
        raise FileRejected(UNREADABLE, shown, exc.strerror or type(exc).__name__) from None
    finally:
        os.close(fd)
    data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    if len(data) > limit:
        raise FileRejected(OVERSIZED, shown, f"more than {limit} bytes")
    return data


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device")):
        if test(mode):
            return name
    return "block device" if stat.S_ISBLK(mode) else "socket or other special file"


def parse_manifest(data: bytes, shown: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FileRejected(BAD_MANIFEST, shown, f"not valid JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise FileRejected(BAD_MANIFEST, shown, "must be a JSON object")
    if manifest.get("format") != FORMAT_NAME or manifest.get("format_version") != FORMAT_VERSION:
        raise FileRejected(
            BAD_MANIFEST,
            shown,
            f"unsupported format {manifest.get('format')!r} v{manifest.get('format_version')!r}, "
            f"expected {FORMAT_NAME!r} v{FORMAT_VERSION}",
        )
    if not isinstance(manifest.get("files"), dict):
        raise FileRejected(BAD_MANIFEST, shown, "no 'files' table")
    return manifest


def read_manifest_at(dir_fd: int, root: Path, directory: Path) -> dict[str, Any]:
    shown = Path(directory) / MANIFEST_NAME
    return parse_manifest(read_at(dir_fd, MANIFEST_NAME, MAX_MANIFEST_BYTES, root, shown), shown)


def _expected(manifest: dict[str, Any], name: str, shown: Path) -> tuple[int, str]:
    record = manifest["files"].get(name)
    if not isinstance(record, dict):
        raise FileRejected(NOT_IN_MANIFEST, shown, f"no sha256/size recorded in {MANIFEST_NAME}")
    size, digest = record.get("bytes"), record.get("sha256")
    if type(size) is not int or size < 0 or not isinstance(digest, str):
        raise FileRejected(BAD_MANIFEST, shown, f"bad record for {name!r}")
    return size, digest


def read_verified(root: Path, directory: Path, name: str) -> tuple[bytes, dict[str, Any]]:
    """``directory/name`` and its manifest, after the store, type, size and SHA-256 checks."""
    directory = Path(directory)
    with store_directory(root, directory) as dir_fd:
        manifest = read_manifest_at(dir_fd, root, directory)
        shown = directory / name
        size, digest = _expected(manifest, name, shown)
        data = read_at(dir_fd, name, size, root, shown)
    if len(data) < size:
        raise FileRejected(TRUNCATED, shown, f"{len(data)} bytes, manifest says {size}")
    actual = sha256_bytes(data)
    if actual != digest:
        raise FileRejected(HASH_MISMATCH, shown, f"sha256 {actual[:12]}…, manifest says {digest[:12]}…")
    return data, manifest


def read_manifest(root: Path, directory: Path) -> dict[str, Any]:
    """The artifact directory's manifest, read under the same rules as the weights."""
    with store_directory(root, directory) as dir_fd:
        return read_manifest_at(dir_fd, root, Path(directory))
