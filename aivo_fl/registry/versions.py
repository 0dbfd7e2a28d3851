"""Main model versions: registration and the atomic promotion to the single ACTIVE version."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from aivo_fl.registry.base import RegistryBase
from aivo_fl.registry.errors import PromotionConflict, RegistryError
from aivo_fl.registry.schema import MainModelVersion, ModelVersionStatus, utcnow


@dataclass(frozen=True)
class MainVersionRecord:
    version: str
    status: ModelVersionStatus
    model_path: str
    parent_version: str | None
    metrics: dict[str, Any]
    created_at: datetime
    promoted_at: datetime | None


class Versions(RegistryBase):
    def register_main_version(
        self,
        version: str,
        model_path: str,
        metrics: dict[str, Any],
        *,
        parent_version: str | None = None,
        activate: bool = True,
    ) -> MainVersionRecord:
        """Record a new main version; with `activate`, promote it in the same transaction."""
        with self._session() as session:
            if session.scalar(sa.select(MainModelVersion.id).where(MainModelVersion.version == version)):
                raise RegistryError(f"Main model version {version} is already registered")
            row = MainModelVersion(
                version=version,
                status=ModelVersionStatus.CANDIDATE,
                modelPath=model_path,
                parentVersion=parent_version,
                metrics=metrics,
            )
            session.add(row)
            session.flush()
            if activate:
                promote_row(session, row, expected_active=parent_version)
            return _main_record(row)

    def promote(self, version: str, *, expected_active: str | None) -> MainVersionRecord:
        """Make `version` active and deprecate the current active one, atomically.

        `expected_active` is the version the caller built on: if another promotion got there
        first, this one loses with PromotionConflict instead of silently overwriting it.
        """
        with self._session() as session:
            row = session.scalar(sa.select(MainModelVersion).where(MainModelVersion.version == version))
            if row is None:
                raise RegistryError(f"Unknown main model version {version}")
            promote_row(session, row, expected_active=expected_active)
            return _main_record(row)

    def get_active_version(self) -> MainVersionRecord | None:
        with self._session() as session:
            row = session.scalar(
                sa.select(MainModelVersion).where(MainModelVersion.status == ModelVersionStatus.ACTIVE)
            )
            return _main_record(row) if row else None

    def list_main_versions(self) -> list[MainVersionRecord]:
        with self._session() as session:
            rows = session.scalars(sa.select(MainModelVersion).order_by(MainModelVersion.id)).all()
            return [_main_record(r) for r in rows]


def promote_row(session: Session, row: MainModelVersion, *, expected_active: str | None) -> None:
    """Inside the caller's transaction: `row` becomes ACTIVE if the active version is still `expected_active`."""
    # Row lock on the current active version: a racing promotion waits here, then sees it changed.
    current = session.scalar(
        sa.select(MainModelVersion).where(MainModelVersion.status == ModelVersionStatus.ACTIVE).with_for_update()
    )
    current_version = current.version if current else None
    if current_version != expected_active:
        raise PromotionConflict(
            f"Active main version is {current_version or 'none'}, expected {expected_active or 'none'}; "
            f"version {row.version} was not promoted"
        )
    now = utcnow()
    if current is not None:
        current.status = ModelVersionStatus.DEPRECATED
        current.deprecatedAt = now
        session.flush()
    row.status = ModelVersionStatus.ACTIVE
    row.promotedAt = now
    try:
        session.flush()
    except IntegrityError as exc:  # the single-active index: someone else won the race
        raise PromotionConflict(f"Version {row.version} lost a concurrent promotion") from exc


def _main_record(row: MainModelVersion) -> MainVersionRecord:
    return MainVersionRecord(
        version=row.version,
        status=ModelVersionStatus(row.status),
        model_path=row.modelPath,
        parent_version=row.parentVersion,
        metrics=dict(row.metrics or {}),
        created_at=row.createdAt,
        promoted_at=row.promotedAt,
    )
