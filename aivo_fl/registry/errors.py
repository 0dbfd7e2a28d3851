"""What the registry refuses with: one exception type per cause, each message one line."""

from __future__ import annotations


class RegistryError(Exception):
    """A registry operation was refused; the message says why."""


class PromotionConflict(RegistryError):
    """Another promotion changed the active version first."""


class AggregationInProgress(RegistryError):
    """Another aggregation round holds the lease."""


class RefusedLearnerId(RegistryError):
    """A learner id the registry will not store or look up (NUL, too long, path-like)."""


class DatabaseUnavailable(Exception):
    """The registry database cannot be reached. The message names the host, never the password."""
