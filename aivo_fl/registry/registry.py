"""`ModelRegistry`: every read and write of the registry database, and nothing else.

One facade over one module per concern (versions, learners, training sessions, rounds, the
aggregation lease, erasure). No Dagster here; the Dagster resource and the CLI both wrap this class.
Methods return plain dataclasses or dicts so callers never hold ORM objects past a session.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from aivo_fl.registry.erasure import Erasure
from aivo_fl.registry.learners import Learners
from aivo_fl.registry.lock import AggregationLease
from aivo_fl.registry.rounds import Rounds
from aivo_fl.registry.schema import (
    FederatedUpdate,
    MainModelVersion,
    ModelTrainingSession,
    PersonalizedModel,
)
from aivo_fl.registry.training_sessions import TrainingSessions
from aivo_fl.registry.versions import Versions


class ModelRegistry(Versions, Learners, TrainingSessions, Rounds, AggregationLease, Erasure):
    """The registry of main versions, learners, personalized models, sessions and updates."""

    def get_statistics(self) -> dict[str, int]:
        """Counts in the shape AIVO's dashboard reads."""
        with self._session() as session:

            def count(query: sa.Select[Any]) -> int:
                return int(session.scalar(query) or 0)

            return {
                "totalMainVersions": count(sa.select(sa.func.count(MainModelVersion.id))),
                "totalLearnerModels": count(sa.select(sa.func.count(PersonalizedModel.id))),
                "activeLearnerModels": count(
                    sa.select(sa.func.count(PersonalizedModel.id))
                    .outerjoin(self.app.learner, self.app.learner.c.id == PersonalizedModel.learnerId)
                    .where(PersonalizedModel.status == "ACTIVE", self.app.learner.c.deletedAt.is_(None))
                ),
                "totalFederatedUpdates": count(sa.select(sa.func.count(FederatedUpdate.id))),
                "totalTrainingSessions": count(sa.select(sa.func.count(ModelTrainingSession.id))),
            }
