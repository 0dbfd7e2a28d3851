"""What checking the app's interactions row by row costs: `count_unusable_interactions` (what
`aivo-fl stats` runs: one streamed pass, every row decoded and checked) against a plain read of the
same rows (their packed features streamed and joined into one array, nothing checked).

    python -m benchmarks interaction_checks            # 100 learners x 1,000 interactions (SQLite)
    python -m benchmarks interaction_checks --quick    # 20 learners x 500
"""

from __future__ import annotations

import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from aivo_fl.registry import ModelRegistry, migrate
from aivo_fl.registry.schema import LearnerInteraction
from benchmarks.report import Column, cli
from benchmarks.report import table as text_table


def _registry(root: Path, learners: int, per_learner: int) -> ModelRegistry:
    registry = ModelRegistry(f"sqlite:///{root / 'registry.db'}")
    migrate(registry.engine)
    rng = np.random.default_rng(0)
    labels = {head: np.zeros(per_learner, dtype=np.int64) for head in ("difficulty", "modality", "success")}
    for i in range(learners):
        learner_id = f"learner-{i:06d}"
        registry.add_learner(learner_id, baseline_completed_at=datetime.now(UTC))
        registry.add_interactions(learner_id, rng.normal(size=(per_learner, 256)).astype(np.float32), labels)
    return registry


def _plain_read(registry: ModelRegistry) -> int:
    query = sa.select(LearnerInteraction.features).execution_options(stream_results=True, yield_per=10_000)
    rows = 0
    with registry.engine.connect() as conn:
        for part in conn.execute(query).partitions():
            rows += np.frombuffer(b"".join(r[0] for r in part), dtype="<f4").size // 256
    return rows


def _best_of(repeats: int, call: Any) -> tuple[float, Any]:
    best, value = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        value = call()
        best = min(best, time.perf_counter() - started)
    return best, value


def run(quick: bool = False) -> dict[str, Any]:
    learners, per_learner = (20, 500) if quick else (100, 1_000)
    with tempfile.TemporaryDirectory(prefix="aivo-bench-checks-") as tmp:
        registry = _registry(Path(tmp), learners, per_learner)
        plain_s, rows = _best_of(3, lambda: _plain_read(registry))
        checked_s, counts = _best_of(3, registry.count_unusable_interactions)
        registry.engine.dispose()
    return {
        "rows": rows,
        "skipped": counts,
        "plain_read_seconds": plain_s,
        "checked_seconds": checked_s,
        "checked_vs_plain": checked_s / plain_s,
        "checked_rows_per_second": rows / checked_s,
    }


def table(results: dict[str, Any]) -> str:
    rows = [
        {"what": "plain read (baseline)", "s": results["plain_read_seconds"], "ratio": 1.0},
        {
            "what": "read and check every row",
            "s": results["checked_seconds"],
            "ratio": results["checked_vs_plain"],
            "rate": results["checked_rows_per_second"],
        },
    ]
    columns = [
        Column("what", "pass"),
        Column("s", "seconds", "{:.2f}"),
        Column("ratio", "vs plain", "{:.2f}"),
        Column("rate", "rows/s", "{:,.0f}"),
    ]
    return text_table(rows, columns, f"{results['rows']:,} packed interaction rows, SQLite, best of 3")


if __name__ == "__main__":
    cli("interaction_checks", run, table, __doc__)
