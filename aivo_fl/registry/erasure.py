"""Complete erasure of a learner: their data goes, the audit trail stays under a keyed pseudonym.

Training sessions and the personalized model row are deleted, and so are the learner's row and
interactions in aivo-fl's own tables (the demo). The app's own tables (APP_LEARNER_TABLE,
APP_INTERACTION_TABLE) are left to the app: it deleted the learner, it removes its rows on its
own terms (foreign keys, retention), and aivo-fl never reads a deleted learner's interactions.
Past rounds keep their contribution rows (which version each learner fed, with what weight and
norm) and the privacy ledger keeps their charge, but every mention of the learner's id in them
becomes `erased-<HMAC-SHA256(key, id)>`: stable under one key, so the rows still add up per
(anonymous) learner, and not reversible without the key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from aivo_fl.registry.base import RegistryBase, checked_learner_id
from aivo_fl.registry.errors import RegistryError
from aivo_fl.registry.schema import (
    FederatedUpdate,
    FederatedUpdateContribution,
    Learner,
    LearnerInteraction,
    ModelTrainingSession,
    PersonalizedModel,
)

PSEUDONYM_PREFIX = "erased-"


@dataclass(frozen=True)
class ErasureReport:
    """What one erasure removed or rewrote; names the learner only by pseudonym."""

    pseudonym: str
    interactions: int
    training_sessions: int
    personalized_models: int
    learner_rows: int
    contributions_pseudonymized: int
    rounds_rewritten: int


def pseudonym(learner_id: str, key: str | bytes) -> str:
    secret = key.encode() if isinstance(key, str) else key
    if not secret:
        raise RegistryError("Erasure needs a key (AIVO_ERASURE_KEY) to pseudonymize the audit trail")
    return PSEUDONYM_PREFIX + hmac.new(secret, learner_id.encode(), hashlib.sha256).hexdigest()


class Erasure(RegistryBase):
    def erase_learner(self, learner_id: str, key: str | bytes) -> ErasureReport:
        """Erase everything the registry holds about a learner, in one transaction (so a crash
        erases all or nothing, and running it again is harmless)."""
        checked_learner_id(learner_id)
        alias = pseudonym(learner_id, key)
        scrub = IdScrubber(learner_id, alias)

        with self._session() as session:
            interactions = learners = 0
            if not self.app.app_owned:
                interactions = _delete(session, LearnerInteraction.learnerId, learner_id)
                learners = _delete(session, Learner.id, learner_id)
            sessions = _delete(session, ModelTrainingSession.learnerId, learner_id)
            models = _delete(session, PersonalizedModel.learnerId, learner_id)
            contributions = _pseudonymize_contributions(session, scrub)
            rounds = _rewrite_rounds(session, scrub)
        return ErasureReport(alias, interactions, sessions, models, learners, contributions, rounds)


def _delete(session: Session, column: Any, learner_id: str) -> int:
    return session.execute(sa.delete(column.class_).where(column == learner_id)).rowcount


class IdScrubber:
    """Replaces the learner id wherever it stands as a whole id (in JSON keys, values, free text)."""

    def __init__(self, learner_id: str, alias: str) -> None:
        self.learner_id, self.alias = learner_id, alias
        # Learner ids are [A-Za-z0-9._-]: another id or a longer word must not match a shorter id.
        self._pattern = re.compile(rf"(?<![A-Za-z0-9._-]){re.escape(learner_id)}(?![A-Za-z0-9._-])")

    def __call__(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._pattern.sub(self.alias, value)
        if isinstance(value, list):
            return [self(v) for v in value]
        if isinstance(value, dict):
            return {self(k): self(v) for k, v in value.items()}
        return value


def _pseudonymize_contributions(session: Session, scrub: IdScrubber) -> int:
    rows = session.scalars(
        sa.select(FederatedUpdateContribution).where(
            sa.or_(
                FederatedUpdateContribution.learnerId == scrub.learner_id,
                # An exclusion reason may name the learner's files ("missing file .../<id>/...").
                FederatedUpdateContribution.excludedReason.contains(scrub.learner_id, autoescape=True),
            )
        )
    ).all()
    for row in rows:
        row.learnerId = scrub(row.learnerId)
        row.excludedReason = scrub(row.excludedReason)
    return sum(row.learnerId == scrub.alias for row in rows)


def _rewrite_rounds(session: Session, scrub: IdScrubber) -> int:
    # Rounds are weekly: a few hundred rows at most, so reading them all is cheaper than
    # per-backend JSON containment queries.
    rewritten = 0
    for row in session.scalars(sa.select(FederatedUpdate)):
        before = (row.contributingLearners, row.metrics, row.rejectionReason)
        after = (scrub(row.contributingLearners), scrub(row.metrics), scrub(row.rejectionReason))
        if after != before:
            row.contributingLearners, row.metrics, row.rejectionReason = after
            rewritten += 1
    return rewritten
