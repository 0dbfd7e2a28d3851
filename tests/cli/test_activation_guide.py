"""The activation guide's steps 1-6, as written, on a PostgreSQL database that already holds AIVO.

The database is prepared the way Prisma leaves AIVO's (tests/aivo_app.py): the app's "Learner"
and "LearningInteraction" tables with learners and their interactions, and its own
"PersonalizedModel" with rows. Every step is the real `aivo-fl` command in place of the guide's
script, in a scratch folder with its own `.env` and Dagster instance. The provisioning of step 5
and the week of local training are what the Dagster daemon does: sensor ticks and the runs they
ask for, on the same instance (as `aivo-fl demo` does them). At the end the app's rows are
exactly as the app left them.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from aivo_fl.cli.dagster_runs import definitions, local_instance
from aivo_fl.cli.demo_command import _tick_and_run
from aivo_fl.config import load_settings
from aivo_fl.registry import create_registry_engine
from tests.aivo_app import APP_MAPPING, add_app_learner, app_rows, create_aivo_database, delete_in_app
from tests.cli.conftest import RunCli

REPO = Path(__file__).resolve().parents[2]
# Small sizes (the guide's defaults are 100 epochs on 10,000 samples); the guide's layer split.
SMALL = {"TRAINING_EPOCHS": "5", "CURRICULUM_SAMPLES": "1000", "PERSONALIZATION_DEPTH": "guide"}
LEARNERS = [f"aivo-learner-{i}" for i in range(6)]
PREEXISTING_MODELS = [
    ("clm0000000001", "app-learner-1", "aivo-super-model-v1", "ACTIVE"),
    ("clm0000000002", "app-learner-2", "aivo-super-model-v1", "PAUSED"),
]


@pytest.fixture
def aivo_database(postgres_url: str) -> Iterator[sa.Engine]:
    """AIVO before activation: six learners with a baseline and 60 interactions each, one still
    taking the baseline, and the app's own "PersonalizedModel" rows."""
    engine = create_registry_engine(postgres_url)
    create_aivo_database(engine)
    for i, learner in enumerate(LEARNERS):
        add_app_learner(engine, learner, interactions=60, seed=i)
    add_app_learner(engine, "aivo-learner-no-baseline", interactions=5, baseline_done=False)
    yield engine
    engine.dispose()


def _out(result) -> str:  # type: ignore[no-untyped-def]
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _lines_in_order(out: str, lines: list[str]) -> None:
    at = 0
    for line in lines:
        found = out.find(line, at)
        assert found >= 0, f"{line!r} missing (in order) from:\n{out}"
        at = found + len(line)


def _tables(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def _personalized_models(engine: sa.Engine) -> dict[str, tuple[object, ...]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text('SELECT "learnerId", "id", "baseModel", "status", "metadata" FROM "PersonalizedModel"')
        )
        return {r[0]: tuple(r[1:]) for r in rows}


def _daemon_tick(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], sensor: str, job: str) -> int:
    """One tick of `sensor` and the runs it asks for, on the operator's instance (the daemon's job)."""
    monkeypatch.chdir(tmp_path)  # the operator's folder: its .env, models/ and logs/
    for name, value in {**env, "DAGSTER_HOME": str(tmp_path / "dagster_home")}.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    with local_instance() as instance:
        return _tick_and_run(definitions(settings), instance, sensor, job)


def test_activation_guide_steps_on_an_existing_aivo_database(
    run_cli: RunCli, aivo_database: sa.Engine, postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = aivo_database
    app_before = app_rows(engine)
    # What the operator exports before starting: the database and where the app keeps its learners.
    env = {**SMALL, "DATABASE_URL": postgres_url, **APP_MAPPING}

    # Step 1: run the database migration, then verify the new tables exist.
    out = _out(run_cli("migrate", env=env))
    _lines_in_order(
        out,
        [
            "✓ Migrated base -> ",
            'Learners from the app\'s "Learner" (id, baselineCompletedAt=baselineAssessmentCompletedAt, deletedAt)',
            'Interactions from the app\'s "LearningInteraction" (id, learnerId, features, '
            "difficulty=difficultyLevel, modality, success=correct, createdAt)",
        ],
    )
    assert {"MainModelVersion", "FederatedUpdate", "ModelTrainingSession", "PersonalizedModel"} <= _tables(engine)
    assert "LearnerInteraction" not in _tables(engine)  # nothing created beside the app's tables
    columns = {c["name"]: str(c["type"]) for c in sa.inspect(engine).get_columns("PersonalizedModel")}
    assert columns["metadata"] == "JSONB"
    with engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT count(*) FROM pg_type WHERE typname = 'ModelVersionStatus'")) == 1
    assert "✓ Already at revision" in _out(run_cli("migrate", env=env))
    # The app's tables are only read: the demo's learner simulator refuses to write into them.
    simulated = run_cli("simulate-learners", "--count", "1", env=env)
    assert simulated.returncode == 4 and "aivo-fl only reads them" in simulated.stderr
    assert app_rows(engine) == app_before

    # Step 2: train the main model.
    out = _out(run_cli("train-main-model", env=env))
    _lines_in_order(
        out,
        [
            "=== Training Main AIVO Model ===",
            "Generating 1,000 curriculum data samples...",
            "✓ Generated 1,000 samples",
            "Epoch 5/5 - Loss: ",
            "Final Training Results:",
            "  - Final Loss: ",
            "  - Final Accuracy: ",
            "  - Validation Loss: ",
            "  - Validation Accuracy: ",
            "Saving model...",
            "✓ Model saved to models/main-aivo",
            "Registering in ModelRegistry...",
            "✓ Registered version 1.0.0",
        ],
    )
    assert (tmp_path / "models" / "main-aivo" / "1.0.0").is_dir()

    # Step 3: configure the environment: copy the example, set the required variables.
    shutil.copyfile(REPO / ".env.federated.example", tmp_path / ".env")
    with (tmp_path / ".env").open("a") as dotenv:
        dotenv.write(f"DATABASE_URL={postgres_url}\nAIVO_ERASURE_KEY=an-erasure-key-for-the-activation-test\n")
        dotenv.writelines(f"{name}='{value}'\n" for name, value in APP_MAPPING.items())
    env = dict(SMALL)  # from now on the rest comes from .env, as after "restart your application"
    assert load_settings(_env_file=tmp_path / ".env").use_federated_learning

    # Step 4: test model cloning.
    out = _out(run_cli("test-model-cloning", env=env))
    _lines_in_order(
        out,
        [
            "=== Testing Model Cloning ===",
            "Step 1: Verifying main model exists...",
            "✓ Main model found",
            "Clone Information:",
            "  - Source Version: 1.0.0",
            "  - Total Layers: 15",
            "  - Frozen Layers: 4",
            "  - Trainable Layers: 11",
            "  - Total Parameters: 156,928",
            "  - Trainable Parameters: 89,344",
            "  - Frozen Parameters: 67,584",
            "✓ All tests passed!",
        ],
    )

    # Step 5: verify integration. A new learner completes the baseline in the app; provisioning clones.
    add_app_learner(engine, "learner-abc", interactions=60, seed=99)
    app_before = app_rows(engine)
    assert _daemon_tick(tmp_path, monkeypatch, env, "new_learner_sensor", "clone_learners") >= 1
    record = _personalized_models(engine)["learner-abc"]
    assert len(record[0]) == 25 and record[1:3] == ("aivo-super-model-v1", "ACTIVE")
    metadata = record[3]
    assert metadata["federatedLearning"] is True and metadata["sourceVersion"] == "1.0.0"
    assert {"totalLayers": 15, "frozenLayers": 4, "trainableLayers": 11}.items() <= metadata["architecture"].items()
    assert Path(metadata["clonedModelPath"]) == tmp_path / "models" / "learners" / "learner-abc"
    assert (tmp_path / "models" / "learners" / "learner-abc" / "manifest.json").is_file()
    models = _personalized_models(engine)
    assert set(models) == {*LEARNERS, "learner-abc", "app-learner-1", "app-learner-2"}  # not the one without baseline

    # A week of the learners' activity: the activity sensor's training runs.
    assert _daemon_tick(tmp_path, monkeypatch, env, "learner_activity_sensor", "train_learners") >= 1
    eligible = _out(run_cli("eligible", env=env))
    assert "7 learners ready for aggregation (trained within 7 days)" in eligible

    # Step 6, option A: aggregation by hand, dry run first, with the guide's options.
    for options in ([], ["--strategy", "fedavg"], ["--max-stale", "14"], ["--learning-rate", "0.05"]):
        out = _out(run_cli("run-federated-aggregation", "--dry-run", *options, env=env))
        assert "=== Federated Aggregation === (dry run: nothing will be written)" in out
        assert "[dry run] The round would " in out
    assert json.loads(_out(run_cli("history", "--json", env=env))) == []  # the dry runs wrote nothing
    too_many = run_cli("run-federated-aggregation", "--min-learners", "10", env=env)
    assert too_many.returncode == 1 and "No eligible learners" in too_many.stderr
    real = run_cli("run-federated-aggregation", "--min-learners", "3", env=env)
    rounds = 1
    if real.returncode != 0:
        # The gate rejected the noisy candidate (recorded, not promoted): the guide's troubleshooting
        # for "Performance degradation" is a lower learning rate.
        assert "Performance degradation" in real.stderr, real.stdout + real.stderr
        real = run_cli("run-federated-aggregation", "--min-learners", "3", "--learning-rate", "0.05", env=env)
        rounds = 2
    assert "✓ Promoted version 1." in _out(real)  # 1.1.0, or 1.2.0 after a rejected 1.1.0
    log = (tmp_path / "logs" / "aggregation.log").read_text()  # the guide's "review logs"
    assert "=== Federated Aggregation ===" in log

    # Monitoring: statistics, aggregation history, eligibility.
    stats = json.loads(_out(run_cli("stats", "--json", env=env)))
    expected = {
        "totalMainVersions": 1 + rounds,  # 1.0.0 and each round's candidate (a rejected one is recorded too)
        "totalLearnerModels": 9,  # 7 clones + the app's 2 rows
        "activeLearnerModels": 8,  # the app's PAUSED row is not active
        "totalFederatedUpdates": rounds,
        "totalTrainingSessions": 7,
    }
    assert {key: stats[key] for key in expected} == expected
    history = _out(run_cli("history", env=env))
    _lines_in_order(
        history,
        [
            "Update ",
            "  - Date: ",
            "  - Learners: withheld: differential privacy",  # DP on: the draw stays in the registry
            "  - Strategy: fedavg",
            "  - Improvement: ",
            "  - Result: PROMOTED 1.0.0 -> 1.",
        ],
    )
    assert "0 learners ready for aggregation" in _out(run_cli("eligible", "--days", "7", env=env))

    # The app deletes a learner: the erasure run removes what aivo-fl holds, the app's rows stay the app's.
    delete_in_app(engine, "learner-abc")
    app_before = app_rows(engine)
    assert _daemon_tick(tmp_path, monkeypatch, env, "deleted_learner_sensor", "erase_learners") == 1
    assert "learner-abc" not in _personalized_models(engine)
    assert not (tmp_path / "models" / "learners" / "learner-abc").exists()
    with engine.connect() as conn:
        left = conn.scalar(
            sa.text(
                'SELECT (SELECT count(*) FROM "ModelTrainingSession" WHERE "learnerId" = :id) + '
                '(SELECT count(*) FROM "FederatedUpdateContribution" WHERE "learnerId" = :id)'
            ),
            {"id": "learner-abc"},
        )
    assert left == 0
    assert _daemon_tick(tmp_path, monkeypatch, env, "deleted_learner_sensor", "erase_learners") == 0

    # The app's rows are exactly as the app left them, and so are its own "PersonalizedModel" rows.
    assert app_rows(engine) == app_before
    models = _personalized_models(engine)
    assert [(models[learner][0], learner, *models[learner][1:3]) for _, learner, _, _ in PREEXISTING_MODELS] == [
        (row_id, learner, base, status) for row_id, learner, base, status in PREEXISTING_MODELS
    ]
