"""`aivo-fl migrate | stats | history | eligible` through the real console script."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sqlalchemy as sa

from aivo_fl.ml.interactions import ROW_PROBLEMS
from aivo_fl.registry import ModelRegistry
from aivo_fl.registry.schema import utcnow
from tests.cli.conftest import RunCli


def test_migrate_twice_is_a_no_op_the_second_time(run_cli: RunCli, database_url: str) -> None:
    env = {"DATABASE_URL": database_url}
    first = run_cli("migrate", env=env)
    assert first.returncode == 0, first.stderr
    assert "Migrated base -> 0003" in first.stdout
    second = run_cli("migrate", env=env)
    assert second.returncode == 0, second.stderr
    assert "Already at revision 0003; nothing to do" in second.stdout
    down = run_cli("migrate", "--revision", "base", env=env)
    assert "Migrated 0003 -> base" in down.stdout


def test_stats_json_on_an_empty_registry_is_all_zeros(run_cli: RunCli, database_url: str) -> None:
    env = {"DATABASE_URL": database_url}
    assert run_cli("migrate", env=env).returncode == 0
    result = run_cli("stats", "--json", env=env)
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    counts = {k: v for k, v in stats.items() if k not in ("privacy", "skippedInteractions")}
    assert counts == {
        "totalMainVersions": 0,
        "totalLearnerModels": 0,
        "activeLearnerModels": 0,
        "totalFederatedUpdates": 0,
        "totalTrainingSessions": 0,
    }
    assert set(stats["skippedInteractions"].values()) == {0}
    assert json.loads(run_cli("history", "--json", env=env).stdout) == []
    assert json.loads(run_cli("eligible", "--days", "7", "--json", env=env).stdout) == []
    assert "0 learners ready for aggregation" in run_cli("eligible", env=env).stdout


def test_default_database_is_a_sqlite_file_under_models(run_cli: RunCli, tmp_path) -> None:
    assert run_cli("migrate").returncode == 0
    assert (tmp_path / "models" / "registry.db").is_file()


def test_unmigrated_registry_says_to_migrate(run_cli: RunCli) -> None:
    result = run_cli("stats")
    assert result.returncode != 0
    assert "run `aivo-fl migrate`" in result.stderr


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("CLIP_NORM", "-1", "CLIP_NORM='-1'"),
        ("TRAINING_EPOCHS", "lots", "TRAINING_EPOCHS='lots'"),
        ("DATABASE_URL", "mysql://u@h/db", "unknown database scheme 'mysql'"),
        ("BATCH_SIZE", "0", "BATCH_SIZE='0'"),
        ("SERVER_OPTIMIZER", "lamb", "unknown server optimizer 'lamb'"),
    ],
)
def test_bad_configuration_names_the_variable(run_cli: RunCli, variable: str, value: str, expected: str) -> None:
    result = run_cli("stats", env={variable: value})
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_config_is_read_from_a_dotenv_file(run_cli: RunCli, tmp_path) -> None:
    (tmp_path / ".env").write_text("CLIP_NORM=-3\n")
    result = run_cli("stats")
    assert result.returncode == 2
    assert "CLIP_NORM='-3'" in result.stderr


def test_unreachable_database_is_one_clear_line_without_the_password(run_cli_subprocess: RunCli) -> None:
    # Port 9 on loopback: nothing listens, so the refusal is immediate. A real process: nothing else
    # it prints (a log line, a warning, a traceback) may reach its stderr.
    result = run_cli_subprocess("stats", env={"DATABASE_URL": "postgresql://aivo:s3cret-pw@127.0.0.1:9/aivo"})
    assert result.returncode == 3
    assert "Traceback" not in result.stderr
    assert "s3cret-pw" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Can't reach database: PostgreSQL at 127.0.0.1:9/aivo" in lines[0]


def test_every_command_has_help(run_cli: RunCli) -> None:
    from aivo_fl.cli.main import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert {"migrate", "stats", "history", "eligible"} <= set(commands)
    for name in commands:
        result = run_cli(name, "--help")
        assert result.returncode == 0
        assert "usage: aivo-fl" in result.stdout


def test_stats_counts_the_interaction_rows_training_skips_by_reason(run_cli: RunCli, sqlite_url: str) -> None:
    env = {"DATABASE_URL": sqlite_url}
    assert run_cli("migrate", env=env).returncode == 0
    registry = ModelRegistry(sqlite_url)
    registry.add_learner("ada", baseline_completed_at=utcnow())
    good, nan = np.zeros(256, "<f4"), np.full(256, np.nan, "<f4")
    with registry.engine.begin() as conn:  # as the app writes them
        conn.execute(
            sa.text(
                'INSERT INTO "LearnerInteraction" ("learnerId", features, difficulty, modality, success, "createdAt") '
                "VALUES ('ada', :f, :d, 1, 1, '2026-12-01 10:00:00')"
            ),
            [
                {"f": good.tobytes(), "d": 2},
                {"f": nan.tobytes(), "d": 2},
                {"f": b"x" * 100, "d": 2},
                {"f": good.tobytes(), "d": 99},
            ],
        )
    registry.engine.dispose()

    counted = json.loads(run_cli("stats", "--json", env=env).stdout)["skippedInteractions"]
    text = run_cli("stats", env=env).stdout

    assert counted == dict.fromkeys(ROW_PROBLEMS, 0) | {
        "features_non_finite": 1,
        "features_encoding": 1,
        "label_out_of_range": 1,
    }
    assert "Interaction rows training skips (3, docs/operations.md)" in text
    assert "features_non_finite:   1" in text and "timestamp_missing:     0" in text
