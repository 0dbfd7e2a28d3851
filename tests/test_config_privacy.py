"""Privacy settings: the user-level preset, CLIP_NORM=auto and the sample rate."""

from __future__ import annotations

import pytest

from aivo_fl.config import PRIVACY_PRESETS, ConfigError, load_settings


def test_preset_sets_every_knob() -> None:
    settings = load_settings(PRIVACY_PRESET="user-level")
    for name, value in PRIVACY_PRESETS["user-level"].items():
        assert getattr(settings, name) == value
    assert settings.clip_norm == "auto" and settings.privacy_delta == 1e-6
    # epsilon <= 2 over 52 rounds: the noise and the sample rate are the planner's, round by round
    privacy = settings.privacy()
    assert (privacy.target_epsilon, privacy.target_rounds, privacy.epsilon_budget) == (2.0, 52, 2.0)
    small = load_settings(PRIVACY_PRESET="user-level-epsilon-8-small-schools")
    assert (small.noise_multiplier, small.learner_sample_rate, small.privacy_epsilon_budget) == (1.0, 0.1, 8.0)
    assert small.privacy().target_epsilon is None


def test_preset_conflict_names_both_and_the_same_value_is_fine() -> None:
    with pytest.raises(ConfigError, match=r"sets PRIVACY_DELTA=1e-06; remove PRIVACY_DELTA=1e-05"):
        load_settings(PRIVACY_PRESET="user-level", PRIVACY_DELTA="1e-5")
    assert load_settings(PRIVACY_PRESET="user-level", PRIVACY_DELTA="1e-6").privacy_delta == 1e-6
    small = "user-level-epsilon-8-small-schools"
    with pytest.raises(ConfigError, match=r"sets NOISE_MULTIPLIER=1.0; remove NOISE_MULTIPLIER=0.1"):
        load_settings(PRIVACY_PRESET=small, NOISE_MULTIPLIER="0.1")
    with pytest.raises(ConfigError, match="ENABLE_DIFFERENTIAL_PRIVACY"):
        load_settings(PRIVACY_PRESET="user-level", ENABLE_DIFFERENTIAL_PRIVACY="false")


@pytest.mark.parametrize(("raw", "expected"), [("auto", "auto"), ("AUTO", "auto"), ("2.5", 2.5), (" auto ", "auto")])
def test_clip_norm_is_a_number_or_auto(raw: str, expected: object) -> None:
    assert load_settings(CLIP_NORM=raw).clip_norm == expected


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("CLIP_NORM", "x"),
        ("CLIP_NORM", "-1"),
        ("CLIP_NORM", "inf"),
        ("LEARNER_SAMPLE_RATE", "0"),
        ("LEARNER_SAMPLE_RATE", "1.5"),
        ("CLIP_TARGET_QUANTILE", "1"),
        ("PRIVACY_PRESET", "strong"),
    ],
)
def test_bad_privacy_values_name_the_variable(variable: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        load_settings(**{variable: raw})
