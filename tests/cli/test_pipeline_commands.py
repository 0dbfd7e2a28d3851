"""The activation guide's operator scripts through the real `aivo-fl` console script."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.instance.ref import InstanceRef

from tests.cli.conftest import RunCli

SMALL = {"TRAINING_EPOCHS": "5", "CURRICULUM_SAMPLES": "1000"}


@pytest.fixture
def migrated(run_cli: RunCli, database_url: str) -> dict[str, str]:
    env = {**SMALL, "DATABASE_URL": database_url}
    assert run_cli("migrate", env=env).returncode == 0
    return env


def test_train_main_model_prints_the_guide_output_and_records_a_dagster_run(
    run_cli: RunCli, migrated: dict[str, str], tmp_path: Path
) -> None:
    result = run_cli("train-main-model", env=migrated)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for line in (
        "=== Training Main AIVO Model ===",
        "Generating 1,000 curriculum data samples...",
        "✓ Generated 1,000 samples",
        "Epoch 5/5 - Loss: ",
        "Final Training Results:",
        "  - Final Accuracy: ",
        "  - Validation Loss: ",
        "  - Validation Accuracy: ",
        "  - Test Accuracy: ",
        "  - Bayes Ceiling (test): ",
        "✓ Model saved to models/main-aivo/1.0.0",
        "✓ Registered version 1.0.0",
    ):
        assert line in out, line
    assert out.index("Final Training Results:") < out.index("Saving model...") < out.index("Registering")
    assert (tmp_path / "models" / "main-aivo" / "1.0.0" / "model.safetensors").is_file()
    # The run is in the operator's Dagster instance, so the UI shows it.
    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(tmp_path / "dagster_home"))) as instance:
        [run] = instance.get_runs()
        assert run.job_name == "train_main_model"
        assert run.is_success

    again = run_cli("train-main-model", env=migrated)
    assert "✓ Registered version 2.0.0" in again.stdout  # a retrain is the next major version
    stats = json.loads(run_cli("stats", "--json", env=migrated).stdout)
    assert stats["totalMainVersions"] == 2


def test_cloning_test_names_the_failing_step_then_passes_once_trained(
    run_cli: RunCli, migrated: dict[str, str]
) -> None:
    missing = run_cli("test-model-cloning", env=migrated)
    assert missing.returncode == 4  # "Main model not found" is exit 4 everywhere
    assert "Step 1 failed (Verifying main model exists)" in missing.stderr
    assert "Main model not found" in missing.stderr

    guide = {**migrated, "PERSONALIZATION_DEPTH": "guide"}
    assert run_cli("train-main-model", env=guide).returncode == 0
    result = run_cli("test-model-cloning", env=guide)
    assert result.returncode == 0, result.stderr
    steps = [line for line in result.stdout.splitlines() if line.startswith("Step ")]
    assert [s.split(":")[0] for s in steps] == [f"Step {i}" for i in range(1, 8)]
    # The guide's depth prints the guide's counts, computed from the real model.
    for label in (
        "Learner ID",
        "Source Version: 1.0.0",
        "Total Layers: 15",
        "Frozen Layers: 4",
        "Trainable Layers: 11",
        "Total Parameters: 156,928",
        "Trainable Parameters: 89,344",
        "Frozen Parameters: 67,584",
    ):
        assert f"  - {label}" in result.stdout, label
    assert result.stdout.rstrip().endswith("✓ All tests passed!")
    # The throw-away test learner leaves nothing behind.
    assert json.loads(run_cli("stats", "--json", env=migrated).stdout)["totalLearnerModels"] == 0


def test_aggregation_refuses_while_switched_off_and_dry_run_reports_no_eligible_learners(
    run_cli: RunCli, migrated: dict[str, str]
) -> None:
    assert run_cli("train-main-model", env=migrated).returncode == 0
    off = run_cli("run-federated-aggregation", "--min-learners", "3", env=migrated)
    assert off.returncode == 1
    assert "Federated learning is disabled" in off.stderr

    on = {**migrated, "USE_FEDERATED_LEARNING": "true"}
    assert run_cli("simulate-learners", "--count", "2", env=on).returncode == 0
    dry = run_cli("run-federated-aggregation", "--dry-run", env=on)
    assert dry.returncode == 1
    assert "No eligible learners" in dry.stderr
    assert json.loads(run_cli("history", "--json", env=on).stdout) == []


def test_bad_options_are_refused_by_the_parser(run_cli_subprocess: RunCli) -> None:
    bogus = run_cli_subprocess("run-federated-aggregation", "--strategy", "bogus")
    assert bogus.returncode == 2
    assert "invalid choice: 'bogus'" in bogus.stderr
    assert run_cli_subprocess("simulate-learners", "--count", "0").returncode == 2
    assert run_cli_subprocess("run-federated-aggregation", "--learning-rate", "-1").returncode == 2


def test_demo_runs_the_whole_cycle(run_cli: RunCli) -> None:
    result = run_cli(
        "demo", "--learners", "12", "--rounds", "2", env={"TRAINING_EPOCHS": "20", "CURRICULUM_SAMPLES": "3000"}
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # One cloning run over the learners' buckets clones all 12 from 1.0.0.
    assert "✓ Cloned 12 learner model(s) from main version 1.0.0" in result.stdout
    assert "✓ 1 cloning run(s) for 12 learners" in result.stdout
    assert result.stdout.count("=== Federated Aggregation ===") == 2
    assert "Learner models:        12" in result.stdout
    assert "Training sessions:     24" in result.stdout
    assert "Worst-case learner epsilon:" in result.stdout
    table = result.stdout.split("8. Per round", 1)[1].splitlines()
    rows = [line.split() for line in table if line.strip()[:1].isdigit()]
    assert [r[0] for r in rows] == ["0", "1", "2"] and rows[0][1] == "1.0.0"
    assert all(0.0 < float(r[2].rstrip("%")) < 100.0 and 0.0 < float(r[3].rstrip("%")) < 100.0 for r in rows)
    assert rows[0][4] == "0" and rows[-1][5:7] == ["at", "delta"]  # nothing spent before the first round
    assert any("points on 200 newcomers who never trained" in line for line in table)
