"""TORCH_NUM_THREADS reaches the training inside a real Dagster run; unset, the CPUs are split between runs."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from aivo_fl.config import ConfigError, load_settings
from aivo_fl.definitions import build_definitions
from aivo_fl.ml.runtime import allowed_cpus
from aivo_fl.registry import ModelRegistry, migrate
from tests.defs.conftest import make_settings


def _threads_of_a_main_model_run(tmp_path: Path, sqlite_url: str, max_concurrent_runs: int) -> int:
    settings = make_settings(tmp_path, sqlite_url, training_epochs=1, curriculum_samples=200)
    registry = ModelRegistry(settings.database_url)
    migrate(registry.engine)
    try:
        overrides = {"concurrency": {"runs": {"max_concurrent_runs": max_concurrent_runs}}}
        with dg.instance_for_test(overrides=overrides) as instance:
            job = build_definitions(settings).resolve_job_def("train_main_model")
            result = job.execute_in_process(instance=instance, raise_on_error=False)
        # One epoch on 200 samples may miss the ceiling check; the materialization is what counts here.
        [materialization] = result.asset_materializations_for_node("main_model")
        return materialization.metadata["torch_threads"].value
    finally:
        registry.engine.dispose()


def test_torch_num_threads_setting_is_what_the_run_trains_on(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_NUM_THREADS", "1")
    assert _threads_of_a_main_model_run(tmp_path, sqlite_url, max_concurrent_runs=1) == 1


def test_unset_threads_split_the_allowed_cpus_between_concurrent_runs(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TORCH_NUM_THREADS", raising=False)
    cpus = allowed_cpus()
    assert _threads_of_a_main_model_run(tmp_path / "alone", sqlite_url, max_concurrent_runs=1) == cpus
    assert _threads_of_a_main_model_run(tmp_path / "shared", sqlite_url, max_concurrent_runs=cpus + 1) == 1


def test_torch_num_threads_must_be_a_positive_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_NUM_THREADS", "0")
    with pytest.raises(ConfigError, match="TORCH_NUM_THREADS='0'"):
        load_settings()
    monkeypatch.setenv("TORCH_NUM_THREADS", "")
    assert load_settings().torch_num_threads is None
