"""Every release surface of real DP rounds: nothing names a learner, nothing exact about their data.

Real rounds on a temporary Dagster instance (the aggregation asset materialized, its checks, the
alert sensor posting to 127.0.0.1), then the CLI (`history --json`, `stats --json`, a dry run) on
the same registry. The trust boundary is docs/privacy.md: the registry and the model store are
trusted; these surfaces are released.
"""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
from pydantic import SecretStr

from aivo_fl.defs.ticks import tick_sensor
from aivo_fl.ml.round.gate import pooled_counts
from aivo_fl.ml.store.artifacts import load_main_model
from aivo_fl.operations.learners import split_interactions
from tests.cli.conftest import in_process
from tests.defs.conftest import SQLITE_ONLY, Deployment
from tests.defs.test_federated_cycle import _clone_and_train
from tests.operations.test_alerts import receiver
from tests.trained import TrainedMain

pytestmark = SQLITE_ONLY

# DP on, half the learners drawn each round: who was drawn is what must not leak.
PRIVATE = {"enable_differential_privacy": True, "noise_multiplier": 1.0, "learner_sample_rate": 0.5}
HARMFUL = {"ops": {"federated_main_model": {"config": {"learning_rate": 5000.0}}}}


def _event_log(deployment: Deployment, run_id: str) -> str:
    return "\n".join(dg.serialize_value(entry) for entry in deployment.instance.all_logs(run_id))


def _cli_env(deployment: Deployment) -> dict[str, str]:
    s = deployment.settings
    return {
        "DATABASE_URL": s.database_url,
        "AIVO_MAIN_MODEL_PATH": str(s.main_model_path),
        "AIVO_LEARNER_MODELS_PATH": str(s.learner_models_path),
        "AGGREGATION_LOG_PATH": str(s.aggregation_log_path),
        "USE_FEDERATED_LEARNING": "true",
        "ENABLE_DIFFERENTIAL_PRIVACY": "true",
        "NOISE_MULTIPLIER": "1.0",
        "LEARNER_SAMPLE_RATE": "0.5",
    }


def _exact_heldout_accuracy(deployment: Deployment, drawn: list[str]) -> float:
    """What the old gate released: the drawn learners' pooled held-out accuracy under 1.0.0."""
    model, _ = load_main_model(deployment.store.main_root, "1.0.0")
    sets = [split_interactions(deployment.registry.get_interactions(i))[1] for i in drawn]
    correct, total = pooled_counts(model, sets)
    return correct / total


def test_no_release_surface_names_a_drawn_learner_or_shows_an_exact_learner_figure(
    deployment: Deployment, trained_main: TrainedMain, tmp_path: Path
) -> None:
    with receiver([200]) as (url, received):
        private = deployment.with_settings(**PRIVATE, alert_webhook_url=SecretStr(url))
        private.with_main_version(trained_main)
        cursor = tick_sensor(private.defs, private.instance, "run_failure_alert", None).cursor
        learners, _ = _clone_and_train(private)
        rejected = private.run("federated_aggregation", run_config=HARMFUL)
        assert not rejected.success  # the private gate refused a server rate of 5000
        tick_sensor(private.defs, private.instance, "run_failure_alert", cursor)
        second = private.run("federated_aggregation")
    assert len(received) == 1 and received[0]["title"] == "Aggregation round rejected"
    updates = deployment.registry.get_federated_updates()  # the registry: trusted, holds the draw
    assert [u["status"] for u in updates][:1] == ["REJECTED"] and len(updates) == 2
    assert all(set(u["contributingLearners"]) < set(learners) for u in updates)  # a draw, not everyone
    drawn = sorted({learner for u in updates for learner in u["contributingLearners"]})

    cli = in_process(tmp_path / "cli")
    (tmp_path / "cli").mkdir()
    env = _cli_env(deployment)
    history, stats = cli("history", "--json", env=env), cli("stats", "--json", env=env)
    dry = cli("run-federated-aggregation", "--dry-run", env=env)
    surfaces = {
        "event log, rejected round": _event_log(private, rejected.run_id),
        "event log, second round": _event_log(private, second.run_id),
        "aggregation log": Path(deployment.settings.aggregation_log_path).read_text(),
        "alert payloads": json.dumps(received),
        "history --json": history.stdout,
        "stats --json": stats.stdout,
        "dry run": dry.stdout + dry.stderr,
    }
    assert history.returncode == stats.returncode == 0, history.stderr + stats.stderr
    for name, text in surfaces.items():
        assert text, name
        leaked = [learner for learner in learners if learner in text]
        assert not leaked, f"{name} names learners {leaked[:3]}"
    # Exact learner statistics: none recorded for release, and the old gate's figure nowhere.
    for update in json.loads(history.stdout):
        assert update["accuracyBefore"] is None and update["accuracyAfter"] is None
        assert update["metrics"]["heldoutSamples"] is None and update["metrics"]["improvementNoiseStd"] > 0
        assert update["contributingLearners"] == update["chargedLearners"] and "withheld" in update["chargedLearners"]
    exact = _exact_heldout_accuracy(deployment, drawn)
    for name, text in surfaces.items():
        for shown in (f"{100 * exact:.2f}%", f"{exact:.4f}", f"{100 * exact:.2f},", f"{100 * exact:.2f}}}"):
            assert shown not in text, f"{name} shows the exact held-out accuracy {shown}"
        assert '"accuracy_before_pct"' not in text and 'accuracyBefore": 0' not in text, name
    assert "No verdict on the candidate" in dry.stdout and "Planner:" in dry.stdout
