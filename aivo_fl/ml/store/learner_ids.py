"""Learner ids become directory names, so they are validated before touching the filesystem."""

from __future__ import annotations

import re
from pathlib import Path

MAX_LEARNER_ID_LENGTH = 128
_ALLOWED = re.compile(r"^[A-Za-z0-9._-]+$")


class InvalidLearnerId(ValueError):
    """The learner id could escape or confuse the learner store."""


def validate_learner_id(learner_id: str) -> str:
    if not isinstance(learner_id, str):
        raise InvalidLearnerId(f"learner id must be a string, got {type(learner_id).__name__}")
    shown = repr(learner_id if len(learner_id) <= 40 else learner_id[:40] + "...")
    if not learner_id:
        raise InvalidLearnerId("learner id must not be empty")
    if len(learner_id) > MAX_LEARNER_ID_LENGTH:
        raise InvalidLearnerId(
            f"learner id {shown} is {len(learner_id)} characters; the limit is {MAX_LEARNER_ID_LENGTH}"
        )
    if "\x00" in learner_id:
        raise InvalidLearnerId(f"learner id {shown} contains a NUL byte")
    if "/" in learner_id or "\\" in learner_id:
        raise InvalidLearnerId(f"learner id {shown} contains a path separator")
    if ".." in learner_id:
        raise InvalidLearnerId(f"learner id {shown} contains '..'")
    if learner_id.startswith("."):
        raise InvalidLearnerId(f"learner id {shown} starts with '.' (hidden/relative names are refused)")
    if not _ALLOWED.match(learner_id):
        raise InvalidLearnerId(f"learner id {shown} may only contain letters, digits, '.', '_' and '-'")
    return learner_id


def learner_dir(learners_root: Path, learner_id: str) -> Path:
    """The learner's directory; validated, and confirmed to resolve directly under the root."""
    validate_learner_id(learner_id)
    root = Path(learners_root).resolve()
    path = (root / learner_id).resolve()
    if path.parent != root:
        raise InvalidLearnerId(f"learner id {learner_id!r} resolves outside the learner store {root}")
    return path
