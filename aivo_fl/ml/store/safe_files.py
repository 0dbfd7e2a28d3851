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


def _parts_below(root: str, path: str) -> list[str]:
    """The components of ``path`` below ``root``, or OUTSIDE_STORE. Lexical: nothing is followed.

    Plain strings, not pathlib, and ``abspath`` only where it changes something: this runs for
    every file of a round.
    """
    absolute = path if _plain(path) else os.path.abspath(path)
    base = root if _plain(root) else os.path.abspath(root)
    for attempt in range(2):
        if absolute == base:
            return []
        prefix = base if base.endswith(os.sep) else base + os.sep
        if absolute.startswith(prefix):
            return absolute[len(prefix) :].split(os.sep)
        if attempt == 0:
            base = os.path.realpath(root)  # the path may name the store by its resolved location
    raise FileRejected(OUTSIDE_STORE, path, f"store is {root}")


def _plain(path: str) -> bool:
    """True if ``path`` is already absolute and normal: no ``.``/``..`` component (nothing below a
    separator starts with a dot), no doubled or trailing separator. Then ``abspath`` is the identity."""
    return path.startswith(os.sep) and f"{os.sep}." not in path and os.sep * 2 not in path and not path.endswith(os.sep)


def _refusal(exc: OSError, root: str, dir_fd: int, name: str, shown: str) -> FileRejected:
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


def open_store_directory(root: Path | str, directory: Path | str) -> int:
    """An fd of ``directory``, opened component by component below ``root`` without following links.

    The caller closes it.
    """
    root, directory = os.fspath(root), os.fspath(directory)
    parts = _parts_below(root, directory)
    if len(parts) == 1:  # the common case (<root>/<learner or version>): O_NOFOLLOW covers it in one open
        try:
            return os.open(os.path.join(root, parts[0]), _DIR_FLAGS)
        except OSError as exc:
            parent = _open_root(root)
            try:
                raise _refusal(exc, root, parent, parts[0], os.path.join(root, parts[0])) from None
            finally:
                os.close(parent)
    fd = _open_root(root)
    for depth, part in enumerate(parts):
        try:
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
        except OSError as exc:
            refusal = _refusal(exc, root, fd, part, os.path.join(root, *parts[: depth + 1]))
            os.close(fd)
            raise refusal from None
        os.close(fd)
        fd = child
    return fd


def _open_root(root: str) -> int:
    # The root itself may be a link (the operator's choice); below it nothing is followed.
    try:
        return os.open(root, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
    except OSError as exc:
        raise FileRejected(MISSING if exc.errno == errno.ENOENT else UNREADABLE, root, "store root") from None


def read_at(dir_fd: int, name: str, limit: int, root: Path | str, directory: Path | str) -> bytes:
    """At most ``limit`` bytes of regular file ``name`` in ``dir_fd`` (which is ``directory``); more is OVERSIZED."""
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        raise _refusal(exc, os.fspath(root), dir_fd, name, os.path.join(directory, name)) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):  # before any read: a FIFO or a device never gets read
            raise FileRejected(NOT_REGULAR, os.path.join(directory, name), _kind(info.st_mode))
        # Sized by fstat, so a 1 MiB cap is not a 1 MiB buffer. A regular file's read stops short
        # only at its end; one that grew since fstat is read on, never past the cap.
        data = os.read(fd, min(limit, info.st_size) + 1)
        while info.st_size < len(data) <= limit:
            chunk = os.read(fd, min(limit + 1 - len(data), 1 << 16))
            if not chunk:
                break
            data += chunk
    except OSError as exc:
        raise FileRejected(UNREADABLE, os.path.join(directory, name), exc.strerror or type(exc).__name__) from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise FileRejected(OVERSIZED, os.path.join(directory, name), f"more than {limit} bytes")
    return data


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device")):
        if test(mode):
            return name
    return "block device" if stat.S_ISBLK(mode) else "socket or other special file"


def parse_manifest(data: bytes, directory: Path | str) -> dict[str, Any]:
    try:
        manifest = json.loads(data.decode())  # UTF-8, as written: skips json's encoding sniffing
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad_manifest(directory, f"not valid JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise _bad_manifest(directory, "must be a JSON object")
    if manifest.get("format") != FORMAT_NAME or manifest.get("format_version") != FORMAT_VERSION:
        raise _bad_manifest(
            directory,
            f"unsupported format {manifest.get('format')!r} v{manifest.get('format_version')!r}, "
            f"expected {FORMAT_NAME!r} v{FORMAT_VERSION}",
        )
    if not isinstance(manifest.get("files"), dict):
        raise _bad_manifest(directory, "no 'files' table")
    return manifest


def _bad_manifest(directory: Path | str, detail: str) -> FileRejected:
    return FileRejected(BAD_MANIFEST, os.path.join(directory, MANIFEST_NAME), detail)


def read_manifest_at(dir_fd: int, root: Path | str, directory: Path | str) -> dict[str, Any]:
    return parse_manifest(read_at(dir_fd, MANIFEST_NAME, MAX_MANIFEST_BYTES, root, directory), directory)


def _expected(manifest: dict[str, Any], directory: Path | str, name: str) -> tuple[int, str]:
    record = manifest["files"].get(name)
    if not isinstance(record, dict):
        raise FileRejected(NOT_IN_MANIFEST, os.path.join(directory, name), f"no sha256/size in {MANIFEST_NAME}")
    size, digest = record.get("bytes"), record.get("sha256")
    if type(size) is not int or size < 0 or not isinstance(digest, str):
        raise FileRejected(BAD_MANIFEST, os.path.join(directory, name), f"bad record for {name!r}")
    return size, digest


def read_verified(root: Path | str, directory: Path | str, name: str) -> tuple[bytes, dict[str, Any]]:
    """``directory/name`` and its manifest, after the store, type, size and SHA-256 checks."""
    dir_fd = open_store_directory(root, directory)
    try:
        manifest = read_manifest_at(dir_fd, root, directory)
        size, digest = _expected(manifest, directory, name)
        data = read_at(dir_fd, name, size, root, directory)
    finally:
        os.close(dir_fd)
    if len(data) < size:
        raise FileRejected(TRUNCATED, os.path.join(directory, name), f"{len(data)} bytes, manifest says {size}")
    actual = hashlib.sha256(data).hexdigest()
    if actual != digest:
        shown = os.path.join(directory, name)
        raise FileRejected(HASH_MISMATCH, shown, f"sha256 {actual[:12]}…, manifest says {digest[:12]}…")
    return data, manifest


def read_manifest(root: Path | str, directory: Path | str) -> dict[str, Any]:
    """The artifact directory's manifest, read under the same rules as the weights."""
    dir_fd = open_store_directory(root, directory)
    try:
        return read_manifest_at(dir_fd, root, directory)
    finally:
        os.close(dir_fd)
