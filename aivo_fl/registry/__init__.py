"""The registry: `ModelRegistry`, one facade over one module per concern, behind one Dagster resource."""

from aivo_fl.registry.database import create_registry_engine, migrate
from aivo_fl.registry.erasure import ErasureReport
from aivo_fl.registry.errors import AggregationInProgress, DatabaseUnavailable, PromotionConflict, RegistryError
from aivo_fl.registry.learners import LearnerInteractions, PersonalizedModelRecord
from aivo_fl.registry.registry import ModelRegistry
from aivo_fl.registry.rounds import ContributionInput, FederatedUpdateInput, RoundSummary
from aivo_fl.registry.training_sessions import EligibleLearner, TrainingSessionInput
from aivo_fl.registry.versions import MainVersionRecord

__all__ = [
    "AggregationInProgress",
    "ContributionInput",
    "DatabaseUnavailable",
    "EligibleLearner",
    "ErasureReport",
    "FederatedUpdateInput",
    "LearnerInteractions",
    "MainVersionRecord",
    "ModelRegistry",
    "PersonalizedModelRecord",
    "PromotionConflict",
    "RegistryError",
    "RoundSummary",
    "TrainingSessionInput",
    "create_registry_engine",
    "migrate",
]
