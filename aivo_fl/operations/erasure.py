"""Complete erasure of learners deleted in the app: files, rows, and their id in the aggregation log.

Order, so a crash at any point is finished by the next run: the files go first, then the
aggregation log is scrubbed, then the registry erases the rows in one transaction (which is what
takes the learner off the "deleted, still holding data" list). Past contributions keep their
audit trail under a keyed hash of the learner id; the privacy ledger keeps its charge.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aivo_fl.ml.store.cloning import remove_learner
from aivo_fl.ml.store.learner_ids import InvalidLearnerId, validate_learner_id
from aivo_fl.operations.store import ModelStore
from aivo_fl.registry import ModelRegistry
from aivo_fl.registry.erasure import pseudonym


@dataclass(frozen=True)
class LearnerErasure:
    """What was removed for one learner, reported under its pseudonym (never the id itself)."""

    pseudonym: str
    rows: dict[str, int] = field(default_factory=dict)
    files: int = 0
    log_lines: int = 0

    def summary(self) -> dict[str, Any]:
        return {"rows": self.rows, "files": self.files, "logLines": self.log_lines}


def erasable(learner_ids: list[str]) -> tuple[list[str], int]:
    """The ids aivo-fl can hold data for, and how many others there were (path-like ids are
    refused at the registry's boundary and never get a folder, so nothing of theirs is here)."""
    valid = []
    for learner_id in learner_ids:
        try:
            valid.append(validate_learner_id(learner_id))
        except InvalidLearnerId:
            continue
    return valid, len(learner_ids) - len(valid)


def _remove_files(store: ModelStore, learner_id: str) -> int:
    directory = store.learner_dir(learner_id)
    count = sum(1 for p in directory.rglob("*") if p.is_file()) if directory.is_dir() else 0
    remove_learner(store.learners_root, learner_id)
    return count


def scrub_log(path: Path, learner_id: str, replacement: str) -> int:
    """Replace the learner id by `replacement` in a text log (rewritten atomically); lines changed."""
    if not path.is_file():
        return 0
    pattern = re.compile(rf"(?<![\w.-]){re.escape(learner_id)}(?![\w.-])")
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    changed = 0
    for i, line in enumerate(lines):
        new = pattern.sub(replacement, line)
        changed += new != line
        lines[i] = new
    if changed:
        temporary = path.with_name(f".{path.name}.scrub")
        temporary.write_text("".join(lines), encoding="utf-8")
        os.replace(temporary, path)
    return changed


def erase_everywhere(
    registry: ModelRegistry, store: ModelStore, learner_id: str, key: bytes, log_path: Path
) -> LearnerErasure:
    """Erase everything aivo-fl holds about a learner deleted in the app (a valid id)."""
    files = _remove_files(store, learner_id)
    alias = pseudonym(learner_id, key)
    log_lines = scrub_log(log_path, learner_id, alias)
    rows = asdict(registry.erase_learner(learner_id, key))
    del rows["pseudonym"]
    return LearnerErasure(alias, rows, files, log_lines)
