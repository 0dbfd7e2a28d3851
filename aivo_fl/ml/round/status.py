"""How an aggregation round ended: one name for it in the round, the registry, Dagster and the CLI."""

from __future__ import annotations

import enum


class RoundStatus(enum.StrEnum):
    PROMOTED = "PROMOTED"  # the candidate passed the gate and is the active version now
    REJECTED = "REJECTED"  # recorded, not promoted (validation gate)
    DRY_RUN = "DRY_RUN"  # computed and reported, nothing written
