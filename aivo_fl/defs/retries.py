"""Retry only what is transient; everything else fails at once with the operator's one line.

Dagster's `RetryPolicy` retries every exception. Assets run their body inside
`fail_fast_unless_transient()`, which turns a permanent error (a dropped database, a corrupt
model, a read-only store, a decision such as "No eligible learners") into a `dg.Failure` that is
not retried and carries the exit code the command line reports.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from aivo_fl.operations.errors import diagnose

# Transient infrastructure errors (a connection reset, a serialization failure) get three more tries.
TRANSIENT_RETRY = dg.RetryPolicy(max_retries=3, delay=5, backoff=dg.Backoff.EXPONENTIAL)

# Metadata key on a step failure: the exit code the command line ends with.
EXIT_CODE_KEY = "exit_code"


def permanent_failure(exc: BaseException) -> dg.Failure:
    diagnosis = diagnose(exc)
    return dg.Failure(description=diagnosis.line, metadata={EXIT_CODE_KEY: diagnosis.exit_code}, allow_retries=False)


@contextmanager
def fail_fast_unless_transient() -> Iterator[None]:
    try:
        yield
    except dg.Failure:
        raise
    except Exception as exc:
        if diagnose(exc).transient:
            raise  # the asset's RetryPolicy tries again
        raise permanent_failure(exc) from exc
