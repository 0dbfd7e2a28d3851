"""Configuration refuses non-finite privacy knobs and empty model-store paths, in one line naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from aivo_fl.config import ConfigError, load_settings

FINITE_ONLY = ("NOISE_MULTIPLIER", "CLIP_NORM", "PRIVACY_EPSILON_BUDGET", "PRIVACY_LEARNER_EPSILON_BUDGET")
STORE_PATHS = ("AIVO_MAIN_MODEL_PATH", "AIVO_LEARNER_MODELS_PATH")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in (*FINITE_ONLY, *STORE_PATHS, "DATABASE_URL", "PRIVACY_DELTA"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("variable", FINITE_ONLY)
@pytest.mark.parametrize("value", ["inf", "Infinity", "-inf", "nan", "NaN"])
def test_non_finite_values_are_refused(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith(f"Invalid configuration: {variable}=") and "\n" not in message


@pytest.mark.parametrize("variable", FINITE_ONLY)
def test_finite_values_are_accepted(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    monkeypatch.setenv(variable, "2.5")
    settings = load_settings()
    assert 2.5 in (
        settings.noise_multiplier,
        settings.clip_norm,
        settings.privacy_epsilon_budget,
        settings.privacy_learner_epsilon_budget,
    )


@pytest.mark.parametrize("variable", STORE_PATHS)
@pytest.mark.parametrize("value", ["", "   "])
def test_empty_store_paths_are_refused(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=rf"^Invalid configuration: {variable}=.*must not be empty") as info:
        load_settings()
    assert "\n" not in str(info.value)


def test_empty_budget_still_means_no_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRIVACY_EPSILON_BUDGET", "")
    assert load_settings().privacy_epsilon_budget is None
