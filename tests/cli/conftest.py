"""Run the real `aivo-fl` console script in a scratch folder with a controlled environment."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

AIVO_FL = str(Path(sys.executable).with_name("aivo-fl"))
# Variables a developer's shell or .env might carry that would leak into the test.
CONFIG_VARIABLES = (
    "DATABASE_URL",
    "USE_FEDERATED_LEARNING",
    "AIVO_MAIN_MODEL_PATH",
    "AIVO_LEARNER_MODELS_PATH",
    "TRAINING_EPOCHS",
    "BATCH_SIZE",
    "CLIP_NORM",
    "NOISE_MULTIPLIER",
    "ENABLE_DIFFERENTIAL_PRIVACY",
    "PRIVACY_EPSILON_BUDGET",
    "PRIVACY_LEARNER_EPSILON_BUDGET",
    "PRIVACY_DELTA",
    "PRIVACY_PRESET",
    "LEARNER_SAMPLE_RATE",
    "CLIP_TARGET_QUANTILE",
    "CURRICULUM_SAMPLES",
    "TORCH_NUM_THREADS",
    "PERSONALIZATION_DEPTH",
    "AIVO_ERASURE_KEY",
    "APP_LEARNER_TABLE",
    "APP_LEARNER_COLUMNS",
    "APP_INTERACTION_TABLE",
    "APP_INTERACTION_COLUMNS",
)

RunCli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run_cli(tmp_path: Path) -> RunCli:
    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        full_env = {k: v for k, v in os.environ.items() if k not in CONFIG_VARIABLES}
        full_env["DAGSTER_HOME"] = str(tmp_path / "dagster_home")
        full_env.update(env or {})
        return subprocess.run(
            [AIVO_FL, *args], cwd=tmp_path, env=full_env, capture_output=True, text=True, timeout=timeout
        )

    return run
