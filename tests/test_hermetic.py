"""The suite never reads the working tree's `.env` or what `make demo` left there (tests/conftest.py).

The proof runs pytest in a folder set up like a working tree after `make demo` and a careless shell:
a `.env` that switches everything on with an erasure key, garbage where the registry, the Dagster
instance and the logs go, settings exported in the environment, DAGSTER_HOME as the Makefile sets
it. The same test file fails there without the suite's fixtures and passes with them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from aivo_fl.config import Settings, load_settings
from tests.conftest import CONFIG_VARIABLES

REPO = Path(__file__).resolve().parents[1]
POISON = {
    "USE_FEDERATED_LEARNING": "true",
    "AIVO_ERASURE_KEY": "a-key-the-demo-wrote",
    "TRAINING_EPOCHS": "7",
    "DATABASE_URL": "sqlite:///./models/registry.db",
}
# What a test sees: the defaults, its own folder, its own Dagster home.
PROBE = """
import os
from pathlib import Path

import sqlalchemy as sa

from aivo_fl.config import Settings, load_settings
from aivo_fl.registry import ModelRegistry, migrate


def test_nothing_of_the_working_tree_is_seen(tmp_path):
    assert load_settings().model_dump() == Settings(_env_file=None).model_dump()
    assert Settings().erasure_key is None and not Settings().use_federated_learning
    assert Path(os.environ["DAGSTER_HOME"]).is_relative_to(tmp_path)
    registry = ModelRegistry(load_settings().database_url)  # ./models/registry.db, garbage in the tree
    migrate(registry.engine)
    registry.engine.dispose()
"""


def run_probe(tree: Path, *plugins: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in CONFIG_VARIABLES}
    env |= POISON | {"DAGSTER_HOME": str(tree / ".dagster_home"), "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "--rootdir", str(tree)]
    command += [arg for plugin in plugins for arg in ("-p", plugin)]
    return subprocess.run([*command, "test_probe.py"], cwd=tree, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def demo_tree(tmp_path: Path) -> Path:
    tree = tmp_path / "working-tree"
    for folder in ("models", ".dagster_home", "logs"):
        (tree / folder).mkdir(parents=True)
    (tree / ".env").write_text("".join(f"{name}={value}\n" for name, value in POISON.items()))
    (tree / "models" / "registry.db").write_bytes(b"not a database: what a crashed demo left")
    (tree / ".dagster_home" / "dagster.yaml").write_text("run_storage: [not, valid\n")
    (tree / "logs" / "aggregation.log").write_text("learner-000001 included\n")
    (tree / "test_probe.py").write_text(PROBE)
    return tree


def test_a_poisoned_working_tree_changes_nothing_for_the_suite(demo_tree: Path) -> None:
    unguarded = run_probe(demo_tree)
    assert unguarded.returncode == 1, unguarded.stdout + unguarded.stderr  # the probe can fail ...
    guarded = run_probe(demo_tree, "tests.conftest")
    assert guarded.returncode == 0, guarded.stdout + guarded.stderr  # ... and the suite's fixtures keep it out
    assert "1 passed" in guarded.stdout


def test_each_test_runs_in_its_own_folder_with_no_setting_in_the_environment(tmp_path: Path) -> None:
    assert Path.cwd() == tmp_path and not (tmp_path / ".env").exists()
    assert Path(os.environ["DAGSTER_HOME"]) == tmp_path / "dagster_home"
    assert {name for name in CONFIG_VARIABLES if name in os.environ} == set()
    assert load_settings().model_dump() == Settings(_env_file=None).model_dump()
