"""One dynamic partition per learner.

Per-learner partitions make every learner's clone and training visible in the UI. Dagster
recommends at most 100,000 partitions per asset; the README gives the plan beyond that.
"""

from __future__ import annotations

import dagster as dg

learner_partitions = dg.DynamicPartitionsDefinition(name="learners")
