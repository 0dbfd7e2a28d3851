"""New-learner sensor tick and cloning for 100 / 1,000 / 10,000 new learners.

For each size: a fresh SQLite registry and a temporary Dagster instance; one sensor tick (timed,
tracemalloc peak), then every requested cloning run (each over a range of learner buckets)
executed in-process on that instance. Baselines in the same run: the runs a
one-run-per-learner sensor would request, and a naive clone that copies the whole model.

    python -m benchmarks.bench_sensor            # 100, 1,000, 10,000
    python -m benchmarks.bench_sensor --quick    # 100, 1,000 (cloning runs at 100 only)
"""

from __future__ import annotations

import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import dagster as dg
import sqlalchemy as sa

from benchmarks.report import Column, cli
from benchmarks.report import table as report_table

QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


def execute_requests(job: dg.JobDefinition, instance: dg.DagsterInstance, requests: list[dg.RunRequest]) -> int:
    """Execute each requested run in-process, as the daemon would launch it; a failed run stops the
    benchmark (a figure from a half-done run would be wrong). Returns the number of runs."""
    for request in requests:
        result = job.execute_in_process(instance=instance, tags=request.tags, raise_on_error=False, run_config=QUIET)
        if not result.success:
            raise RuntimeError(f"{job.name} run failed for {request.tags}")
    return len(requests)


def trained_deployment(root: Path) -> tuple[Any, Any, Any]:
    """Settings, a migrated SQLite registry holding a (barely) trained main 1.0.0, and the definitions."""
    from aivo_fl.config import Settings
    from aivo_fl.definitions import build_definitions
    from aivo_fl.ml.training.main_model import TrainingConfig
    from aivo_fl.operations.main_model import build_curriculum_dataset, train_and_register_main_model
    from aivo_fl.operations.store import ModelStore
    from aivo_fl.registry import ModelRegistry, migrate

    settings = Settings(
        use_federated_learning=True,
        database_url=f"sqlite:///{root / 'registry.db'}",
        main_model_path=root / "main-aivo",
        learner_models_path=root / "learners",
    )
    registry = ModelRegistry(settings.database_url)
    migrate(registry.engine)
    store = ModelStore.from_settings(settings)
    dataset = build_curriculum_dataset(store, 500, 0, report=lambda _: None)
    train_and_register_main_model(registry, store, dataset.path, TrainingConfig(epochs=1), report=lambda _: None)
    return settings, registry, build_definitions(settings)


def add_learners(registry: Any, count: int) -> None:
    """The app creating learners who completed their baseline: one bulk insert, as sign-ups would over time."""
    from aivo_fl.registry.schema import Learner, utcnow

    now = utcnow()
    with registry.engine.begin() as conn:
        conn.execute(
            sa.insert(Learner),
            [{"id": f"learner-{i:06d}", "baselineCompletedAt": now, "createdAt": now} for i in range(count)],
        )


def _heads_clone_seconds(settings: Any, count: int) -> float:
    """Our clone without Dagster around it: what the event log's per-bucket overhead is added to."""
    from aivo_fl.ml.store.cloning import clone_for_learner

    root = Path(settings.learner_models_path).parent / "plain-clones"
    started = time.perf_counter()
    for i in range(count):
        clone_for_learner(settings.main_model_path, root, f"l{i}", "1.0.0")
    return (time.perf_counter() - started) / count


def _naive_clone_seconds(settings: Any, count: int) -> tuple[float, int]:
    """Baseline: copy the whole main model per learner (what a clone that keeps the trunk costs)."""
    from aivo_fl.ml.store.artifacts import load_main_model, save_artifact

    model, _ = load_main_model(settings.main_model_path, "1.0.0")
    tensors = {k: v.numpy() for k, v in model.state_dict().items()}
    root = Path(settings.learner_models_path).parent / "naive"
    started = time.perf_counter()
    for i in range(count):
        save_artifact(root / f"l{i}", tensors, {"kind": "naive-clone"})
    seconds = (time.perf_counter() - started) / count
    size = sum(p.stat().st_size for p in (root / "l0").iterdir())
    return seconds, size


def measure(count: int, clone: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, dg.instance_for_test() as instance:
        root = Path(tmp)
        settings, registry, defs = trained_deployment(root)
        add_learners(registry, count)
        sensor = defs.resolve_sensor_def("new_learner_sensor")
        tracemalloc.start()
        started = time.perf_counter()
        with dg.build_sensor_context(instance=instance, definitions=defs, resources=defs.resources) as context:
            data = sensor.evaluate_tick(context)
        tick_seconds = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        row: dict[str, Any] = {
            "learners": count,
            "runs_requested": len(data.run_requests),
            "baseline_runs_one_per_learner": count,
            "run_reduction": count / max(len(data.run_requests), 1),
            "tick_seconds": tick_seconds,
            "tick_peak_mib": peak / 2**20,
        }
        if clone:
            job = defs.resolve_job_def("clone_learners")
            started = time.perf_counter()
            execute_requests(job, instance, data.run_requests)
            clone_seconds = time.perf_counter() - started
            learner_dir = Path(settings.learner_models_path) / "learner-000000"
            clone_bytes = sum(p.stat().st_size for p in learner_dir.iterdir())
            naive_seconds, naive_bytes = _naive_clone_seconds(settings, min(count, 200))
            heads_seconds = _heads_clone_seconds(settings, min(count, 200))
            row.update(
                {
                    "cloning_seconds": clone_seconds,
                    "cloning_ms_per_learner": 1000 * clone_seconds / count,
                    "bytes_per_learner": clone_bytes,
                    "naive_full_copy_bytes": naive_bytes,
                    "bytes_ratio_vs_naive": naive_bytes / clone_bytes,
                    "naive_clone_ms_per_learner_no_dagster": 1000 * naive_seconds,
                    "heads_clone_ms_per_learner_no_dagster": 1000 * heads_seconds,
                    "models_registered": registry.get_statistics()["totalLearnerModels"],
                }
            )
        registry.engine.dispose()
        return row


def run(quick: bool = False) -> dict[str, Any]:
    plan = [(100, True), (1_000, False)] if quick else [(100, True), (1_000, True), (10_000, True)]
    return {"rows": [measure(count, clone) for count, clone in plan]}


COLUMNS = (
    Column("learners", "learners", "{:,}"),
    Column("runs_requested", "runs"),
    Column("run_reduction", "vs 1 run/learner", "{:.0f}x"),
    Column("tick_seconds", "tick s", "{:.2f}"),
    Column("tick_peak_mib", "tick MiB", "{:.1f}"),
    Column("cloning_seconds", "clone s", "{:.1f}"),
    Column("cloning_ms_per_learner", "ms/learner", "{:.1f}"),
    Column("heads_clone_ms_per_learner_no_dagster", "no-Dagster ms", "{:.1f}"),
    Column("naive_clone_ms_per_learner_no_dagster", "full-copy ms", "{:.1f}"),
    Column("bytes_per_learner", "bytes/learner", "{:,}"),
    Column("bytes_ratio_vs_naive", "vs full copy", "{:.0f}x"),
)


def table(result: dict[str, Any]) -> str:
    title = "New-learner sensor: one tick, then the requested cloning runs (in-process, SQLite registry)"
    return report_table(result["rows"], COLUMNS, title)


if __name__ == "__main__":
    cli("sensor", run, table, __doc__)
