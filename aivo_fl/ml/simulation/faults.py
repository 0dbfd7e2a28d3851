"""What goes wrong in a real week, put on the round's real path: late updates and broken files.

A simulated week's updates are held in memory. :func:`with_faults` turns some of them into what a
real week also brings, and leaves the refusing to the product's round:

* a **late** update was trained days ago against the version active then (a device that was
  offline) and is only offered now: the round's metadata screen refuses it as stale;
* a **broken** upload is written as a real clone file (its update, the manifest in its header), then damaged as uploads
  get damaged (a flipped byte, a cut-off transfer, a file that never landed): the round reads it
  through :class:`~aivo_fl.ml.store.deltas.DeltaReader` and refuses it with the file check's reason.

Nothing here marks an update as bad: the product's code has to find out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from aivo_fl.ml.aggregation.base import Delta
from aivo_fl.ml.round.gather import LearnerUpdate
from aivo_fl.ml.store.clone_file import CLONE_NAME, encode_clone

# How an upload breaks (what the simulation does to the file, not what the round will say).
FLIPPED_BYTE = "flipped byte"
CUT_OFF = "cut off"
NEVER_LANDED = "never landed"
DAMAGES = (FLIPPED_BYTE, CUT_OFF, NEVER_LANDED)


@dataclass(frozen=True)
class WeekFaults:
    """One week's trouble, by learner id: how many days late an update is, how an upload broke."""

    days_late: Mapping[str, int] = field(default_factory=dict)
    broken: Mapping[str, str] = field(default_factory=dict)  # learner id -> one of DAMAGES

    def __post_init__(self) -> None:
        if set(self.days_late) & set(self.broken):
            raise ValueError("a learner's update is either late or broken, not both")
        unknown = set(self.broken.values()) - set(DAMAGES)
        if unknown:
            raise ValueError(f"unknown damage(s) {sorted(unknown)}; expected one of {DAMAGES}")


def with_faults(
    offered: Sequence[LearnerUpdate],
    in_memory: Mapping[str, Delta],
    faults: WeekFaults,
    version_at: Callable[[datetime], str],
    uploads: Path,
) -> tuple[list[LearnerUpdate], dict[str, Delta]]:
    """``offered`` with ``faults`` applied: late updates re-dated (trained ``days_late`` earlier,
    against ``version_at`` that time), broken ones written under ``uploads`` as damaged files and
    no longer held in memory (the round then reads their files)."""
    held = dict(in_memory)
    out = []
    for update in offered:
        lid = update.learner_id
        if lid in faults.days_late:
            trained_at = update.trained_at - timedelta(days=faults.days_late[lid])
            update = replace(update, trained_at=trained_at, source_version=version_at(trained_at))
        elif lid in faults.broken:
            path = _write_damaged(uploads, lid, held.pop(lid), faults.broken[lid])
            update = replace(update, delta_path=path)
        out.append(update)
    return out, held


def _write_damaged(uploads: Path, learner_id: str, delta: Delta, damage: str) -> Path:
    """The clone file local training would write (the learner's own tensors are not the round's
    business: zeros here), then the damage done to the file."""
    directory = uploads / learner_id
    directory.mkdir(parents=True, exist_ok=True)
    update = {k: np.asarray(v, dtype=np.float32) for k, v in delta.items()}
    personal = {k: np.zeros_like(v) for k, v in update.items()}
    data = encode_clone(personal, update, {"kind": "learner-clone", "learner_id": learner_id})
    path = directory / CLONE_NAME
    if damage == FLIPPED_BYTE:
        flipped = bytearray(data)
        flipped[-1] ^= 0x01  # last byte of the last tensor: the file still parses, only its hash tells
        path.write_bytes(bytes(flipped))
    elif damage == CUT_OFF:
        path.write_bytes(data[: len(data) // 2])
    else:
        path.unlink(missing_ok=True)
    return path
