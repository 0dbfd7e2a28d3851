"""`main_model_near_bayes_ceiling`: the main model's test accuracy against the Bayes ceiling, with a
sentence saying what was checked and, when it fails, why. Materialized on a real temporary instance."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from aivo_fl.config import Settings
from aivo_fl.definitions import build_definitions
from aivo_fl.defs.asset_checks import MAX_GAP_POINTS, near_ceiling
from aivo_fl.operations.store import ModelStore
from aivo_fl.registry import ModelRegistry, migrate
from tests.defs.conftest import Deployment, make_settings


@pytest.fixture
def sqlite_deployment(tmp_path: Path, sqlite_url: str) -> Iterator[Deployment]:
    defaults = Settings.model_fields  # the product's own defaults: what a fresh demo trains with
    settings = make_settings(
        tmp_path,
        sqlite_url,
        training_epochs=defaults["training_epochs"].default,
        curriculum_samples=defaults["curriculum_samples"].default,
    )
    registry = ModelRegistry(settings.database_url)
    migrate(registry.engine)
    with dg.instance_for_test() as instance:
        yield Deployment(settings, build_definitions(settings), instance, registry, ModelStore.from_settings(settings))
    registry.engine.dispose()


def _ceiling_check(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
    [evaluation] = [e for e in result.get_asset_check_evaluations() if e.check_name == "main_model_near_bayes_ceiling"]
    return evaluation


def test_the_sentence_says_what_was_checked_and_why_it_failed() -> None:
    passed, sentence = near_ceiling(89.8, 90.73, 1500)
    assert passed
    assert sentence == (
        "Test accuracy 89.80% is 0.93 points below the Bayes ceiling of 90.73% on the 1,500 held-out test "
        f"samples, within the {MAX_GAP_POINTS:g} points allowed."
    )
    passed, sentence = near_ceiling(88.3, 90.55, 1500)
    assert not passed
    assert sentence.startswith(
        "Test accuracy 88.30% is 2.25 points below the Bayes ceiling of 90.55% on the 1,500 held-out test "
        f"samples, more than the {MAX_GAP_POINTS:g} points allowed: the model learned the curriculum worse"
    )
    assert near_ceiling(90.55 - MAX_GAP_POINTS, 90.55, 10)[0]  # exactly the allowance passes


def test_a_model_trained_one_epoch_fails_the_check_with_its_reason(sqlite_deployment: Deployment) -> None:
    result = sqlite_deployment.with_settings(training_epochs=1).run("train_main_model")
    assert result.success  # the check is not blocking: the model is registered, the check says what is wrong
    check = _ceiling_check(result)
    assert not check.passed
    assert "more than the 2 points allowed: the model learned the curriculum worse" in check.description
    assert check.metadata["gap_points"].value > MAX_GAP_POINTS


def test_the_default_training_passes_with_margin(sqlite_deployment: Deployment) -> None:
    """The product's defaults (10,000 curriculum samples, up to 100 epochs, data seed 0: a fresh demo)."""
    result = sqlite_deployment.run("train_main_model")
    assert result.success
    check = _ceiling_check(result)
    assert check.passed, check.description
    assert check.description.endswith(f"within the {MAX_GAP_POINTS:g} points allowed.")
    [materialization] = result.asset_materializations_for_node("main_model")
    metadata = {k: v.value for k, v in materialization.metadata.items()}
    assert metadata["test_samples"] == 1500 and 1 <= metadata["best_epoch"] <= metadata["epochs_run"] <= 100
    assert metadata["gap_to_ceiling_points"] < MAX_GAP_POINTS - 0.25  # a margin, not a scrape
