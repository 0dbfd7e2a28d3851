"""AIVO's own database as Prisma leaves it: the app's learners and interactions under the app's names.

What an operator finds before activation: the app's "PersonalizedModel" (tests/registry/
test_migrations.py), a "Learner" table with more columns than aivo-fl reads and its own name for
the baseline timestamp, and a "LearningInteraction" table with cuid text ids, features as
`real[]`, its own names for two heads (a boolean for success) and a foreign key to "Learner".
The mapping below is what the operator writes in `.env` to point aivo-fl at them.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from aivo_fl.ml.simulation.world import generate_learner
from tests.registry.test_migrations import PRISMA_PERSONALIZED_MODEL

APP_TABLES = [
    """CREATE TABLE "Learner" (
        "id" TEXT NOT NULL,
        "email" TEXT NOT NULL,
        "displayName" TEXT NOT NULL,
        "baselineAssessmentCompletedAt" TIMESTAMP(3),
        "deletedAt" TIMESTAMP(3),
        "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
        "updatedAt" TIMESTAMP(3) NOT NULL,
        CONSTRAINT "Learner_pkey" PRIMARY KEY ("id"))""",
    """CREATE UNIQUE INDEX "Learner_email_key" ON "Learner"("email")""",
    """CREATE TABLE "LearningInteraction" (
        "id" TEXT NOT NULL,
        "learnerId" TEXT NOT NULL,
        "contentId" TEXT NOT NULL,
        "features" REAL[],
        "difficultyLevel" INTEGER NOT NULL,
        "modality" INTEGER NOT NULL,
        "correct" BOOLEAN NOT NULL,
        "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
        CONSTRAINT "LearningInteraction_pkey" PRIMARY KEY ("id"))""",
    """CREATE INDEX "LearningInteraction_learnerId_createdAt_idx" ON "LearningInteraction"("learnerId", "createdAt")""",
    """ALTER TABLE "LearningInteraction" ADD CONSTRAINT "LearningInteraction_learnerId_fkey"
        FOREIGN KEY ("learnerId") REFERENCES "Learner"("id") ON DELETE RESTRICT ON UPDATE CASCADE""",
]

# The operator's mapping (environment variables, as in `.env`).
APP_MAPPING = {
    "APP_LEARNER_TABLE": "Learner",
    "APP_LEARNER_COLUMNS": json.dumps({"baselineCompletedAt": "baselineAssessmentCompletedAt"}),
    "APP_INTERACTION_TABLE": "LearningInteraction",
    "APP_INTERACTION_COLUMNS": json.dumps({"difficulty": "difficultyLevel", "success": "correct"}),
}
# The same mapping as Settings fields.
APP_MAPPING_FIELDS = {
    "app_learner_table": "Learner",
    "app_learner_columns": {"baselineCompletedAt": "baselineAssessmentCompletedAt"},
    "app_interaction_table": "LearningInteraction",
    "app_interaction_columns": {"difficulty": "difficultyLevel", "success": "correct"},
}


def create_aivo_database(engine: sa.Engine) -> None:
    """The app's schema as `prisma migrate` leaves it, with its "PersonalizedModel" rows."""
    with engine.begin() as conn:
        for statement in [*APP_TABLES, *PRISMA_PERSONALIZED_MODEL]:
            conn.execute(sa.text(statement))


def cuid() -> str:
    return "c" + uuid.uuid4().hex[:24]


def add_app_learner(
    engine: sa.Engine, learner_id: str, *, interactions: int = 0, baseline_done: bool = True, seed: int = 0
) -> None:
    """What the app writes when a learner signs up, takes the baseline and works through content."""
    now = datetime.now(UTC).replace(tzinfo=None)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                'INSERT INTO "Learner" ("id", "email", "displayName", "baselineAssessmentCompletedAt", "updatedAt") '
                "VALUES (:id, :email, :name, :baseline, :now)"
            ),
            {"id": learner_id, "email": f"{learner_id}@school.example", "name": learner_id.title(), "now": now}
            | {"baseline": now if baseline_done else None},
        )
    if interactions:
        add_app_interactions(engine, learner_id, interactions, seed=seed)


def add_app_interactions(engine: sa.Engine, learner_id: str, count: int, *, seed: int = 0) -> None:
    data = generate_learner(learner_id, seed, count)
    samples = [data.train, data.heldout]
    start = datetime.now(UTC).replace(tzinfo=None)
    rows = [
        {
            "id": cuid(),
            "learner": learner_id,
            "content": f"content-{i % 17}",
            "features": [float(x) for x in s.features[i]],
            "difficulty": int(s.targets["difficulty"][i]),
            "modality": int(s.targets["modality"][i]),
            "correct": bool(s.targets["success"][i]),
        }
        for s in samples
        for i in range(len(s))
    ]
    for n, row in enumerate(rows):  # one interaction after another, a millisecond apart
        row["at"] = start + timedelta(milliseconds=n)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                'INSERT INTO "LearningInteraction" ("id", "learnerId", "contentId", "features", "difficultyLevel", '
                '"modality", "correct", "createdAt") '
                "VALUES (:id, :learner, :content, :features, :difficulty, :modality, :correct, :at)"
            ),
            rows,
        )


def delete_in_app(engine: sa.Engine, learner_id: str) -> None:
    """The app soft-deletes a learner (and keeps its rows until its own retention removes them)."""
    with engine.begin() as conn:
        stamped = conn.execute(
            sa.text('UPDATE "Learner" SET "deletedAt" = now() WHERE "id" = :id'), {"id": learner_id}
        ).rowcount
    assert stamped == 1, f"no learner {learner_id}"


def app_rows(engine: sa.Engine) -> dict[str, list[tuple[object, ...]]]:
    """Every row of the app's own tables, to check aivo-fl changed none of them."""
    with engine.connect() as conn:
        return {
            table: [tuple(r) for r in conn.execute(sa.text(f'SELECT * FROM "{table}" ORDER BY "id"'))]
            for table in ("Learner", "LearningInteraction")
        }
