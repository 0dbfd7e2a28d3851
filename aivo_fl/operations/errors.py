"""What an error means to an operator: transient or permanent, one line, and an exit code.

One table for the command line and for Dagster's retry decision, so the same error gets the
same exit code and the same line whichever way a round was started. No Dagster in here.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy.exc as sa_exc

from aivo_fl.config import ConfigError
from aivo_fl.ml.privacy.mechanism import PrivacyBudgetExceeded
from aivo_fl.ml.round.gather import NoEligibleLearners
from aivo_fl.ml.store.artifacts import ArtifactError
from aivo_fl.ml.store.learner_ids import InvalidLearnerId
from aivo_fl.registry import AggregationInProgress, DatabaseUnavailable, RegistryError

# The exit codes the README documents.
EXIT_OK = 0
EXIT_FAILED = 1  # a run or check failed, or a round was refused by a decision (gate, budget, learners)
EXIT_CONFIG = 2  # bad configuration
EXIT_DATABASE = 3  # database unreachable or unusable (missing, read-only)
EXIT_REFUSED = 4  # refused by the registry (schema not migrated, main model not found, a bad learner id)
EXIT_BUSY = 5  # another aggregation round holds the lock: try again later

# PostgreSQL SQLSTATEs worth another attempt: serialization failure, deadlock, the server being
# restarted under us (admin/crash shutdown, cannot connect now), a connection dropped mid-query.
TRANSIENT_SQLSTATES = {"40001", "40P01", "57P01", "57P02", "57P03", "08000", "08003", "08006"}
TRANSIENT_MARKERS = (
    "server closed the connection unexpectedly",
    "connection reset",
    "terminating connection",
    "ssl syscall error",
    "database is locked",  # SQLite: another writer held the lock past the busy timeout
    "could not serialize access",
)


class OperationFailed(Exception):
    """A run or check failed; the message is its one line, `exit_code` what the command returns."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Diagnosis:
    exit_code: int
    line: str  # one line, no traceback, no password
    transient: bool = False


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def is_transient(exc: BaseException) -> bool:
    """Only what another attempt can fix: connection resets, serialization failures, locks."""
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        if getattr(exc.orig, "pgcode", None) in TRANSIENT_SQLSTATES:
            return True
    if isinstance(exc, sa_exc.DBAPIError | DatabaseUnavailable | ConnectionError):
        text = str(getattr(exc, "orig", None) or exc).lower()
        return any(marker in text for marker in TRANSIENT_MARKERS)
    return False


def diagnose(exc: BaseException) -> Diagnosis:
    """The exit code and the one line an operator sees for `exc`."""
    transient = is_transient(exc)
    if isinstance(exc, OperationFailed):
        return Diagnosis(exc.exit_code, str(exc))
    if isinstance(exc, ConfigError):
        return Diagnosis(EXIT_CONFIG, str(exc))
    if isinstance(exc, DatabaseUnavailable):
        return Diagnosis(EXIT_DATABASE, f"{exc}. Check DATABASE_URL and that the database is running.", transient)
    if isinstance(exc, sa_exc.DBAPIError):
        # The driver's first line names the problem (read-only, missing database), never the URL.
        return Diagnosis(EXIT_DATABASE, f"Database error: {_first_line(exc)}", transient)
    if isinstance(exc, AggregationInProgress):
        return Diagnosis(EXIT_BUSY, f"{exc}; try again when it has finished")
    if isinstance(exc, RegistryError | InvalidLearnerId):
        return Diagnosis(EXIT_REFUSED, str(exc))
    if isinstance(exc, NoEligibleLearners | PrivacyBudgetExceeded | ArtifactError | ValueError):
        return Diagnosis(EXIT_FAILED, str(exc))
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        return Diagnosis(EXIT_FAILED, f"{exc.strerror or type(exc).__name__}{where}", transient)
    return Diagnosis(EXIT_FAILED, f"{type(exc).__name__}: {_first_line(exc)}", transient)
