"""Refusals and permanent errors: one line on stderr, in the guide's words, with the documented exit code.

Exit codes (README): 1 a run or check failed or a round was refused by a decision, 2 bad
configuration, 3 database unreachable or unusable, 4 refused by the registry, 5 another round
holds the aggregation lock.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from aivo_fl.registry import ModelRegistry
from tests.cli.conftest import AIVO_FL, CONFIG_VARIABLES, RunCli, run_in_process
from tests.conftest import _admin_engine

SMALL = {"TRAINING_EPOCHS": "3", "CURRICULUM_SAMPLES": "500", "USE_FEDERATED_LEARNING": "true"}


def one_line(result: subprocess.CompletedProcess[str], code: int, starts: str) -> str:
    lines = result.stderr.splitlines()
    assert result.returncode == code, (result.returncode, result.stderr[-3000:])
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith(f"✗ {starts}"), lines[0]
    return lines[0]


@dataclass
class AfterDemo:
    folder: Path
    env: dict[str, str]

    def __call__(self, *args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return run_in_process(self.folder, args, {**self.env, **(env_extra or {})})

    def process(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [AIVO_FL, *args],
            cwd=self.folder,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )


@pytest.fixture(scope="module")
def after_demo(tmp_path_factory: pytest.TempPathFactory) -> AfterDemo:
    """One small demo (trained main model, 4 cloned learners with fresh local training) shared by the
    round refusals below; each of them writes nothing that changes the next one's outcome."""
    folder = tmp_path_factory.mktemp("after_demo")
    env = {k: v for k, v in os.environ.items() if k not in CONFIG_VARIABLES}
    env.update(SMALL, DAGSTER_HOME=str(folder / "dagster_home"), DATABASE_URL=f"sqlite:///{folder / 'registry.db'}")
    run = AfterDemo(folder, env)
    # The demo's own round is refused by a tiny budget, so the learners' fresh training stays
    # unused and every round below is offered the same 4 updates.
    demo = run("demo", "--learners", "4", "--rounds", "1", env_extra={"PRIVACY_EPSILON_BUDGET": "0.001"})
    assert demo.returncode == 0, demo.stderr
    assert "Epoch" not in demo.stderr  # progress is printed once, on stdout
    return run


def test_main_model_not_found_is_exit_4_everywhere(run_cli: RunCli, sqlite_url: str) -> None:
    env = {**SMALL, "DATABASE_URL": sqlite_url}
    assert run_cli("migrate", env=env).returncode == 0
    for args in (["run-federated-aggregation", "--dry-run"], ["run-federated-aggregation"], ["test-model-cloning"]):
        line = one_line(run_cli(*args, env=env), 4, "")
        assert "Main model not found" in line, args


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("postgresql://postgres:S3cretPw@127.0.0.1:1/aivo", "PostgreSQL at 127.0.0.1:1/aivo"),
        ("sqlite:////proc/no-such-folder/registry.db", "SQLite file /proc/no-such-folder/registry.db"),
    ],
)
def test_migrate_against_an_unreachable_database(run_cli_subprocess: RunCli, url: str, target: str) -> None:
    line = one_line(run_cli_subprocess("migrate", env={"DATABASE_URL": url}), 3, f"Can't reach database: {target}")
    assert "S3cretPw" not in line


def test_migrate_against_a_read_only_database(run_cli: RunCli, postgres_url: str) -> None:
    name = sa.engine.make_url(postgres_url).database
    admin = _admin_engine()
    with admin.connect() as conn:
        conn.execute(sa.text(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on'))
    admin.dispose()
    line = one_line(run_cli("migrate", env={"DATABASE_URL": postgres_url}), 3, "Database error: ")
    assert "read-only transaction" in line


def test_no_eligible_learners(after_demo: AfterDemo) -> None:
    one_line(after_demo("run-federated-aggregation", "--min-learners", "100"), 1, "No eligible learners: ")
    one_line(after_demo("run-federated-aggregation", "--dry-run", "--min-learners", "100"), 1, "No eligible learners")


def test_privacy_budget_exceeded(after_demo: AfterDemo) -> None:
    budget = {"PRIVACY_EPSILON_BUDGET": "0.5"}
    one_line(after_demo("run-federated-aggregation", env_extra=budget), 1, "Privacy budget exceeded: ")
    one_line(after_demo("run-federated-aggregation", "--dry-run", env_extra=budget), 1, "Privacy budget exceeded: ")


def test_gate_rejection_in_the_guides_words_and_verbose_shows_more(after_demo: AfterDemo) -> None:
    # A huge server step wrecks the candidate: the gate rejects it.
    one_line(after_demo("run-federated-aggregation", "--learning-rate", "5000"), 1, "Performance degradation: ")
    verbose = after_demo("--verbose", "run-federated-aggregation", "--min-learners", "100")
    assert verbose.returncode == 1
    assert len(verbose.stderr.splitlines()) > 1
    assert verbose.stderr.splitlines()[-1].startswith("✗ No eligible learners")


def test_a_round_held_by_a_live_process_is_refused_at_once_with_exit_5(after_demo: AfterDemo) -> None:
    registry = ModelRegistry(after_demo.env["DATABASE_URL"])
    try:
        with registry.aggregation_lock("operator-shell"):  # this test process: alive
            result = after_demo.process("run-federated-aggregation")  # another process
    finally:
        registry.engine.dispose()
    line = one_line(result, 5, "Another aggregation round is running: operator-shell")
    assert line.endswith("try again when it has finished")


def test_corrupt_main_model_fails_at_once_naming_the_problem(after_demo: AfterDemo) -> None:
    """A permanent error is not retried: it used to be tried 4 times over 35 s and then reported as
    "Exceeded max_retries of 3". Runs last in this module: it breaks the shared main model."""
    for weights in (after_demo.folder / "models" / "main-aivo").glob("*/model.safetensors"):
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
    result = after_demo("run-federated-aggregation")
    line = one_line(result, 1, "")
    assert "max_retries" not in line
    assert "hash" in line.lower() or "sha" in line.lower(), line
    assert result.stdout.count("=== Federated Aggregation ===") == 1  # one attempt, no retries
