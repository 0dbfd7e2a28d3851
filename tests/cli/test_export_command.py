"""`aivo-fl export-learner-model`: the file and manifest for the app; bad learner ids get one line."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from aivo_fl.operations.app_simulation import simulate_new_learners
from aivo_fl.operations.learners import clone_learners, train_learner_locally
from aivo_fl.operations.store import ModelStore
from aivo_fl.registry import ModelRegistry, migrate
from tests.cli.conftest import RunCli
from tests.trained import TrainedMain


@pytest.fixture
def deployment_env(tmp_path: Path, trained_main: TrainedMain) -> dict[str, str]:
    """A migrated SQLite registry with a main model and one trained learner, as the CLI's environment."""
    store = ModelStore(tmp_path / "models" / "main-aivo", tmp_path / "models" / "learners")
    url = f"sqlite:///{tmp_path / 'models' / 'registry.db'}"
    (tmp_path / "models").mkdir()
    registry = ModelRegistry(url)
    migrate(registry.engine)
    trained_main.install(registry, store)
    [learner] = simulate_new_learners(registry, 1)
    clone_learners(registry, store, [learner])
    train_learner_locally(registry, store, learner, epochs=5)
    registry.engine.dispose()
    return {
        "DATABASE_URL": url,
        "AIVO_MAIN_MODEL_PATH": str(store.main_root),
        "AIVO_LEARNER_MODELS_PATH": str(store.learners_root),
    }


def test_export_writes_the_file_and_manifest_in_the_working_folder(
    run_cli: RunCli, deployment_env: dict[str, str], tmp_path: Path
) -> None:
    done = run_cli("export-learner-model", "learner-000000", "--format", "int8", env=deployment_env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("✓ Exported learner learner-000000 (main version 1.0.0) as int8\n")
    path = tmp_path / "learner-000000.int8.safetensors"
    manifest = json.loads((tmp_path / "learner-000000.int8.safetensors.manifest.json").read_text())
    assert manifest["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert f"SHA-256: {manifest['sha256']}" in done.stdout and "Held-out accuracy" in done.stdout


@pytest.mark.parametrize(
    ("learner", "message"),
    [
        ("learner-424242", "✗ Learner learner-424242 has no personalized model\n"),
        ("../learner-000000", "✗ learner id '../learner-000000' contains a path separator\n"),
    ],
)
def test_unknown_and_path_like_learners_get_one_line(
    run_cli_subprocess: RunCli, deployment_env: dict[str, str], tmp_path: Path, learner: str, message: str
) -> None:
    before = sorted(p.name for p in tmp_path.iterdir())
    done = run_cli_subprocess("export-learner-model", learner, env=deployment_env)  # all a real process prints
    assert (done.returncode, done.stderr, done.stdout) == (4, message, "")
    assert sorted(p.name for p in tmp_path.iterdir()) == before
