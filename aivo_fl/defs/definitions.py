"""The one `Definitions` object that `workspace.yaml` loads."""

from __future__ import annotations

import dagster as dg

defs = dg.Definitions()
