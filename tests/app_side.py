"""What the AIVO app (not aivo-fl) does to the shared database, and raw reads tests check against."""

from __future__ import annotations

import sqlalchemy as sa

from aivo_fl.registry import ModelRegistry
from aivo_fl.registry.schema import FederatedUpdate, FederatedUpdateContribution, Learner, utcnow


def delete_learner_in_app(registry: ModelRegistry, learner_id: str) -> None:
    """The app soft-deletes a learner by stamping `deletedAt`; aivo-fl only reads it."""
    with registry.engine.begin() as conn:
        result = conn.execute(sa.update(Learner).where(Learner.id == learner_id).values(deletedAt=utcnow()))
    assert result.rowcount == 1, f"no learner {learner_id}"


def contribution_reasons(registry: ModelRegistry, update_id: str) -> dict[str, str | None]:
    """learner id -> excluded reason (None when included) of one recorded round."""
    query = (
        sa.select(FederatedUpdateContribution.learnerId, FederatedUpdateContribution.excludedReason)
        .join(FederatedUpdate, FederatedUpdate.id == FederatedUpdateContribution.federatedUpdateId)
        .where(FederatedUpdate.updateId == update_id)
    )
    with registry.engine.connect() as conn:
        return {learner: reason for learner, reason in conn.execute(query)}
