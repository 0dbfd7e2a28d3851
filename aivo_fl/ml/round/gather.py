"""Step 1 of a round, gather: the offered learner updates, screened, each exclusion with its reason.

:func:`screen` checks the metadata (no file I/O): duplicates, staleness, version lineage, sample
counts. :func:`read_updates` then reads each delta that the round needs exactly once (see
:mod:`aivo_fl.ml.store.deltas`), checks it, and folds it straight into the strategy's running sum; a bad
file excludes only its learner and the round goes on. Which files are read is the accounting's
call (:mod:`.accounting`): under learner sampling, only the drawn learners'.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

import numpy as np

from aivo_fl.ml.aggregation.base import Delta, FlatSum, Layout, flatten, shapes_of
from aivo_fl.ml.round.options import RoundOptions
from aivo_fl.ml.store.deltas import DeltaReader, DeltaRejected, norm_reason


@dataclass(frozen=True)
class LearnerUpdate:
    """A learner's training session as offered to the round."""

    learner_id: str
    delta_path: Path
    num_samples: int
    source_version: str
    trained_at: datetime
    improvement: float  # accuracy gain on the learner's own held-out data (fraction, e.g. 0.04)


@dataclass(frozen=True, slots=True)  # one per offered learner: 100,000 in a large round
class Contribution:
    """What the registry records per offered update."""

    learner_id: str
    weight: float = 0.0  # coefficient of this learner's (clipped) delta in the aggregate; 0 if excluded
    update_norm: float | None = None  # L2 norm before clipping; None if the file was never read
    clipped: bool = False
    excluded_reason: str | None = None
    versions_behind: int = 0
    charged: bool = False  # in the round's population (could have been drawn): their ledger pays


@dataclass(slots=True)
class Update:
    """An update that passed the metadata checks; ``norm`` is its delta's L2 norm once read."""

    index: int  # position among the offered updates
    learner_id: str
    path: Path
    num_samples: int
    improvement: float
    factor: float  # staleness discount
    norm: float
    versions_behind: int


@dataclass(frozen=True)
class Screened:
    """The offered updates after the metadata checks (nothing read yet)."""

    reasons: list[str | None]  # per offered update, in order: why it is excluded, or None
    behind: list[int]  # per offered update: versions behind the base (0 when excluded)
    candidates: list[Update]  # the ones left, in order; their norms are not known yet
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


def screen(
    offered: Sequence[LearnerUpdate], base_version: str, lineage: Sequence[str], options: RoundOptions, now: datetime
) -> Screened:
    """Screen ``offered`` against the base version and its ``lineage`` (oldest first), metadata only."""
    if base_version not in lineage:
        raise ValueError(f"base version {base_version!r} is not in the version history")
    position = {v: i for i, v in enumerate(lineage)}
    reasons: list[str | None] = []
    behind: list[int] = []
    candidates: list[Update] = []
    seen: set[str] = set()
    in_window = 0
    for index, u in enumerate(offered):
        if u.learner_id in seen:
            reasons.append("duplicate update in this round")
            behind.append(0)
            continue
        seen.add(u.learner_id)
        reason = _metadata_reason(u, position, base_version, options.max_stale_days, now)
        in_window += not (reason or "").startswith("stale")
        steps = position[base_version] - position[u.source_version] if reason is None else 0
        reasons.append(reason)
        behind.append(steps)
        if reason is None:
            factor = staleness_factor(steps)
            candidates.append(
                Update(index, u.learner_id, u.delta_path, u.num_samples, u.improvement, factor, math.nan, steps)
            )
    return Screened(reasons, behind, candidates, in_window)


class FlatSource(Protocol):
    def flat(self, update: Update) -> np.ndarray: ...  # the delta in name order; raises DeltaRejected


@dataclass(frozen=True)
class FilesOf:
    """Delta files (each inside ``reader``'s store and matching its folder's manifest)."""

    reader: DeltaReader

    def flat(self, update: Update) -> np.ndarray:
        return self.reader.flat(update.path)


@dataclass(frozen=True)
class InMemory:
    """Deltas held in memory: learner id -> delta (a simulation's). A delta not held is read from
    its file by ``files``, under every check (a simulation's uploads that went wrong)."""

    by_learner: Mapping[str, Delta]
    shapes: Mapping[str, tuple[int, ...]]
    layout: Layout
    files: FlatSource

    def flat(self, update: Update) -> np.ndarray:
        delta = self.by_learner.get(update.learner_id)
        if delta is None:
            return self.files.flat(update)
        if shapes_of(delta) != dict(self.shapes):
            raise ValueError(
                f"in-memory delta of {update.learner_id} has shapes {shapes_of(delta)}, expected {self.shapes}"
            )
        return flatten(delta, self.layout)


def read_updates(
    candidates: Iterable[Update],
    source: FlatSource,
    max_norm: float,
    acc: FlatSum,
    coefficient: Callable[[Update, float], float] | None = None,
    leave_out: Container[str] = (),
) -> tuple[list[Update], dict[int, str]]:
    """Read each candidate's delta once: the usable ones (norms filled in), and why the others are not.

    With ``coefficient``, each usable delta is folded into ``acc`` on the spot (except the learners
    in ``leave_out``); without it ``acc`` only serves as the buffer the norm is computed in.
    """
    usable: list[Update] = []
    refused: dict[int, str] = {}
    for update in candidates:
        try:
            squared = acc.stage(source.flat(update))
        except DeltaRejected as exc:
            refused[update.index] = exc.reason
            continue
        reason = norm_reason(squared, max_norm)
        if reason is not None:
            refused[update.index] = reason
            continue
        update.norm = math.sqrt(squared)
        usable.append(update)
        if coefficient is not None and update.learner_id not in leave_out:
            acc.commit(coefficient(update, update.norm))
    return usable, refused
