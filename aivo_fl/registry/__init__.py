"""The registry: one module (`registry.py`) behind one Dagster resource."""

from aivo_fl.registry.database import DatabaseUnavailable, create_registry_engine, migrate
from aivo_fl.registry.registry import (
    AggregationInProgress,
    ModelRegistry,
    PromotionConflict,
    RegistryError,
)

__all__ = [
    "AggregationInProgress",
    "DatabaseUnavailable",
    "ModelRegistry",
    "PromotionConflict",
    "RegistryError",
    "create_registry_engine",
    "migrate",
]
