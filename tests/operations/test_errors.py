"""diagnose(): each error class gets its documented exit code and one line an operator can act on.

Errors come from the real code paths where that is cheap (an unreachable PostgreSQL with a password
in its URL, a path-like learner id, a missing file); the rest are constructed as the product does.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from aivo_fl.config import ConfigError
from aivo_fl.ml.privacy.mechanism import PrivacyBudgetExceeded
from aivo_fl.ml.round.gather import NoEligibleLearners
from aivo_fl.ml.store.artifacts import ArtifactError
from aivo_fl.ml.store.learner_ids import validate_learner_id
from aivo_fl.operations.errors import OperationFailed, diagnose
from aivo_fl.registry import AggregationInProgress, RegistryError
from aivo_fl.registry.database import create_registry_engine, unavailable

PASSWORD = "Sup3r-s3cret-pw"
# Port 1 on loopback: nothing listens there, the driver fails fast with "connection refused".
UNREACHABLE = f"postgresql://aivo:{PASSWORD}@127.0.0.1:1/aivo"


def _real_dbapi_error() -> sa.exc.DBAPIError:
    engine = create_registry_engine(UNREACHABLE)
    try:
        with engine.connect():
            pass
    except sa.exc.DBAPIError as exc:
        return exc
    finally:
        engine.dispose()
    raise AssertionError("connecting to port 1 unexpectedly succeeded")


def _one_line(text: str) -> None:
    assert text.strip(), "empty diagnosis line"
    assert "\n" not in text, f"diagnosis spans several lines: {text!r}"
    assert "Traceback" not in text


def test_unreachable_database_is_exit_3_one_line_and_never_shows_the_password() -> None:
    exc = _real_dbapi_error()
    diagnosis = diagnose(exc)
    assert diagnosis.exit_code == 3
    _one_line(diagnosis.line)
    assert PASSWORD not in diagnosis.line
    assert "refused" in diagnosis.line.lower() or "connect" in diagnosis.line.lower()


def test_database_unavailable_names_the_host_not_the_password() -> None:
    exc = unavailable(sa.engine.make_url(UNREACHABLE), _real_dbapi_error())
    diagnosis = diagnose(exc)
    assert diagnosis.exit_code == 3
    _one_line(diagnosis.line)
    assert PASSWORD not in diagnosis.line
    assert "127.0.0.1:1" in diagnosis.line
    assert "DATABASE_URL" in diagnosis.line  # tells the operator what to check


def test_password_in_a_dbapi_error_message_is_not_shown_beyond_its_first_line() -> None:
    # A driver whose message carries the DSN on a later line (psycopg does on some failures).
    orig = Exception(f"connection failed\nDSN: postgresql://aivo:{PASSWORD}@db/aivo")
    exc = sa.exc.OperationalError("SELECT 1", {}, orig)
    diagnosis = diagnose(exc)
    assert diagnosis.exit_code == 3
    _one_line(diagnosis.line)
    assert PASSWORD not in diagnosis.line
    assert "connection failed" in diagnosis.line


def test_path_like_learner_id_is_refused_with_exit_4() -> None:
    with pytest.raises(Exception) as caught:
        validate_learner_id("../../etc/passwd")
    diagnosis = diagnose(caught.value)
    assert diagnosis.exit_code == 4
    _one_line(diagnosis.line)


def test_missing_file_is_exit_1_and_names_the_file(tmp_path) -> None:
    missing = tmp_path / "no-such-model.safetensors"
    with pytest.raises(OSError) as caught:
        missing.open("rb")
    diagnosis = diagnose(caught.value)
    assert diagnosis.exit_code == 1
    _one_line(diagnosis.line)
    assert str(missing) in diagnosis.line
    assert not diagnosis.transient


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (ConfigError("Invalid configuration: MIN_LEARNERS must be a positive integer"), 2),
        (RegistryError("Main model not found: 9.9.9"), 4),
        (AggregationInProgress("Another aggregation round is running"), 5),
        (NoEligibleLearners(eligible=1, trained_in_window=1, min_learners=5, window_days=7), 1),
        (PrivacyBudgetExceeded(spent=3.0, this_round=2.0, projected=5.0, budget=4.0), 1),
        (ArtifactError("checksum mismatch"), 1),
        (OperationFailed("Cloning check failed", exit_code=1), 1),
        (OperationFailed("Refused", exit_code=4), 4),
        (RuntimeError("something odd\nwith detail"), 1),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_each_error_class_maps_to_its_documented_exit_code(exc: BaseException, code: int) -> None:
    diagnosis = diagnose(exc)
    assert diagnosis.exit_code == code
    _one_line(diagnosis.line)
    assert str(exc).splitlines()[0] in diagnosis.line


def test_busy_lock_tells_the_operator_to_retry_later() -> None:
    diagnosis = diagnose(AggregationInProgress("Another aggregation round is running: Dagster run abc"))
    assert "try again" in diagnosis.line


def test_dropped_connection_is_transient_but_a_missing_table_is_not() -> None:
    dropped = sa.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))
    missing = sa.exc.ProgrammingError("SELECT 1", {}, Exception('relation "main_versions" does not exist'))
    assert diagnose(dropped).transient
    assert not diagnose(missing).transient
    assert not diagnose(ConfigError("bad")).transient
