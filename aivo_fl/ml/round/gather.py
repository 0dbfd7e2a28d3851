"""Step 1 of a round, gather: the offered learner updates, screened, each exclusion with its reason.

Metadata first (no file I/O): duplicates, staleness, version lineage, sample counts. Then every
remaining delta file is validated once (see :mod:`aivo_fl.ml.deltas`); a bad file excludes only its
learner and the round goes on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from aivo_fl.ml.aggregation.base import Delta, delta_norm, shapes_of
from aivo_fl.ml.deltas import DeltaRejected, checked_norm, load_delta
from aivo_fl.ml.round.options import RoundOptions


@dataclass(frozen=True)
class LearnerUpdate:
    """A learner's training session as offered to the round."""

    learner_id: str
    delta_path: Path
    num_samples: int
    source_version: str
    trained_at: datetime
    improvement: float  # accuracy gain on the learner's own held-out data (fraction, e.g. 0.04)


@dataclass(frozen=True)
class Contribution:
    """What the registry records per offered update."""

    learner_id: str
    weight: float = 0.0  # coefficient of this learner's (clipped) delta in the aggregate; 0 if excluded
    update_norm: float | None = None  # L2 norm before clipping; None if the file was never read
    clipped: bool = False
    excluded_reason: str | None = None
    versions_behind: int = 0
    charged: bool = False  # in the round's population (could have been drawn): their ledger pays


@dataclass(frozen=True)
class Update:
    """A usable update: metadata checked and its delta file validated."""

    index: int  # position among the offered updates
    learner_id: str
    path: Path
    num_samples: int
    improvement: float
    factor: float  # staleness discount
    norm: float
    versions_behind: int


@dataclass(frozen=True)
class Gathered:
    screened: tuple[Contribution, ...]  # one per offered update, in order; excluded ones carry a reason
    usable: tuple[Update, ...]
    trained_in_window: int  # distinct learners whose training is inside the window


class NoEligibleLearners(Exception):
    def __init__(
        self, eligible: int, trained_in_window: int, min_learners: int, window_days: int, already_aggregated: int = 0
    ) -> None:
        used = f", {already_aggregated} of them already aggregated" if already_aggregated else ""
        super().__init__(
            f"No eligible learners: {eligible} usable update(s) from {trained_in_window} learner(s) who "
            f"trained in the last {window_days} days{used}; at least {min_learners} (min_learners) are needed"
        )


def staleness_factor(versions_behind: int) -> float:
    """FedBuff-style (Nguyen et al. 2022) polynomial discount 1 / sqrt(1 + versions behind)."""
    return 1.0 / math.sqrt(1.0 + versions_behind)


def _metadata_reason(
    update: LearnerUpdate, position: Mapping[str, int], base_version: str, max_stale_days: int, now: datetime
) -> str | None:
    age = now - update.trained_at
    if age > timedelta(days=max_stale_days):
        return f"stale: trained {age.days} days ago"
    if update.source_version not in position:
        return f"unknown source version {update.source_version}"
    if position[base_version] < position[update.source_version]:
        return f"source version {update.source_version} is newer than base {base_version}"
    if update.num_samples <= 0:
        return "no training samples"
    return None


def _norm(
    update: LearnerUpdate,
    learners_root: Path,
    shapes: Mapping[str, tuple[int, ...]],
    max_norm: float,
    in_memory: Mapping[str, Delta] | None,
) -> float:
    if in_memory is None:
        return load_delta(update.delta_path, learners_root, shapes, max_norm)[1]
    delta = in_memory[update.learner_id]
    if shapes_of(delta) != dict(shapes):
        raise ValueError(f"in-memory delta of {update.learner_id} has shapes {shapes_of(delta)}, expected {shapes}")
    return checked_norm(delta, delta_norm(delta), update.delta_path, max_norm)


def gather(
    offered: Sequence[LearnerUpdate],
    learners_root: Path,
    shapes: Mapping[str, tuple[int, ...]],
    base_version: str,
    lineage: Sequence[str],
    options: RoundOptions,
    now: datetime,
    in_memory: Mapping[str, Delta] | None = None,
) -> Gathered:
    """Screen ``offered`` against the base version and its ``lineage`` (oldest first). Every delta
    file must lie inside ``learners_root`` and match its folder's manifest; ``in_memory`` (learner id
    -> delta, a simulation's) replaces the files."""
    if base_version not in lineage:
        raise ValueError(f"base version {base_version!r} is not in the version history")
    position = {v: i for i, v in enumerate(lineage)}
    screened: list[Contribution] = []
    usable: list[Update] = []
    seen: set[str] = set()
    in_window = 0
    for index, u in enumerate(offered):
        if u.learner_id in seen:
            screened.append(Contribution(u.learner_id, excluded_reason="duplicate update in this round"))
            continue
        seen.add(u.learner_id)
        reason = _metadata_reason(u, position, base_version, options.max_stale_days, now)
        in_window += not (reason or "").startswith("stale")
        behind = position[base_version] - position[u.source_version] if reason is None else 0
        norm = None
        if reason is None:
            try:
                norm = _norm(u, learners_root, shapes, options.max_delta_norm, in_memory)
            except DeltaRejected as exc:
                reason = exc.reason
        screened.append(Contribution(u.learner_id, 0.0, norm, False, reason, behind))
        if reason is None and norm is not None:
            factor = staleness_factor(behind)
            usable.append(Update(index, u.learner_id, u.delta_path, u.num_samples, u.improvement, factor, norm, behind))
    return Gathered(tuple(screened), tuple(usable), in_window)
