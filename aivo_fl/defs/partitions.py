"""One dynamic partition per learner.

Per-learner partitions make every learner's clone and training visible in the UI. Dagster
recommends at most 100,000 partitions per asset; the README gives the plan beyond that.
"""

from __future__ import annotations

import dagster as dg

learner_partitions = dg.DynamicPartitionsDefinition(name="learners")

# Run-level retries for transient infrastructure errors (a database restart, a dropped connection).
# Validation failures raise `dg.Failure(allow_retries=False)` and are never retried.
TRANSIENT_RETRY = dg.RetryPolicy(max_retries=3, delay=5, backoff=dg.Backoff.EXPONENTIAL)
