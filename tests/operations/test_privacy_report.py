"""The privacy figures recomposed from recorded rounds, checked against dp-accounting directly."""

from __future__ import annotations

import dp_accounting
import pytest

from aivo_fl.ml.privacy.ledger import RoundPrivacy
from aivo_fl.operations.privacy_report import ledger_figures, privacy_summary, summary_warning
from aivo_fl.registry import ModelRegistry

DELTA = 1e-5


def _round(i: int, z: float | None = 1.1, q: float = 0.1, delta: float | None = DELTA) -> RoundPrivacy:
    return RoundPrivacy(
        f"round-{i}", dp_enabled=z is not None, noise_multiplier=z, clip_norm=1.0, sample_rate=q, delta=delta
    )


def _reference_epsilon(rounds: list[RoundPrivacy], delta: float, rdp: bool = False) -> float:
    """dp-accounting called directly: PLD (the product's accountant) or RDP (its cross-check)."""
    pld = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-3)
    accountant = dp_accounting.rdp.RdpAccountant() if rdp else pld
    for r in rounds:
        accountant.compose(
            dp_accounting.PoissonSampledDpEvent(r.sample_rate, dp_accounting.GaussianDpEvent(r.noise_multiplier))
        )
    return accountant.get_epsilon(delta)


def test_epsilon_and_worst_learner_match_an_independent_accountant() -> None:
    rounds = [_round(i) for i in range(4)] + [_round(4, z=0.8, q=0.2)]
    ledgers = {"veteran": rounds, "newcomer": rounds[-2:], "absent": []}
    figures = ledger_figures(rounds, ledgers, fallback_delta=1e-3)

    assert figures["delta"] == DELTA  # the recorded delta, not the fallback
    assert figures["rounds"] == figures["noisedRounds"] == 5
    assert figures["worstCaseLearnerEpsilon"] == pytest.approx(_reference_epsilon(rounds, DELTA), rel=1e-9)
    assert figures["rdpCrossCheck"] == pytest.approx(_reference_epsilon(rounds, DELTA, rdp=True), rel=1e-9)
    assert figures["rdpCrossCheck"] > figures["worstCaseLearnerEpsilon"]  # PLD is tighter
    # The veteran was eligible in every round: the largest real learner is the worst case (no id shown).
    assert figures["largestLearnerEpsilon"] == pytest.approx(figures["worstCaseLearnerEpsilon"])
    assert "maxLearnerEpsilonLearner" not in figures
    # The latest round's settings are reported, not the first's.
    assert figures["noiseMultiplier"] == 0.8 and figures["sampleRate"] == 0.2
    # A newcomer charged for fewer rounds has spent strictly less.
    newcomer = ledger_figures(rounds[-2:], {"newcomer": rounds[-2:]}, fallback_delta=DELTA)
    assert 0 < newcomer["worstCaseLearnerEpsilon"] < figures["worstCaseLearnerEpsilon"]


def test_a_round_released_without_noise_means_no_guarantee_and_says_which() -> None:
    rounds = [_round(0), _round(1, z=None)]
    figures = ledger_figures(rounds, {"a": rounds}, fallback_delta=DELTA)
    assert figures["worstCaseLearnerEpsilon"] is None
    assert "round-1" in figures["noGuarantee"]
    assert figures["largestLearnerEpsilon"] is None
    warning = summary_warning(figures)
    assert warning is not None and warning.startswith("No privacy guarantee")


def test_an_empty_registry_reports_nothing_spent(registry: ModelRegistry) -> None:
    summary = privacy_summary(registry, enabled=True, delta=DELTA, epsilon_budget=4.0, learner_epsilon_budget=None)
    assert summary["rounds"] == 0 and summary["worstCaseLearnerEpsilon"] == 0.0
    assert summary["overBudget"] is False
    assert summary["warning"] is None
    assert summary["delta"] == DELTA  # fallback until a round records one
    assert summary["largestLearnerEpsilon"] == 0.0
