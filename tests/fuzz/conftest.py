"""Property-based tests (hypothesis) over what aivo-fl reads from outside: the app's interaction
rows, model files and manifests, the settings.

Two profiles: `quick` (the default, what `make test` runs) and `nightly` (`make fuzz`: minutes,
HYPOTHESIS_PROFILE=nightly). No example database: the suite writes nothing in the working tree.
Floats are drawn without subnormals: a test process that trained first runs with torch's
flush-to-zero set (aivo_fl/ml/runtime.py), where hypothesis cannot draw them.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "quick", max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "nightly", max_examples=1_000, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "quick"))
