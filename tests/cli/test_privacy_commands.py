"""`stats` and `history` privacy output: recorded rounds only, re-derivable from `history --json`
with an independent dp-accounting PLD computation (and RDP for the cross-check)."""

from __future__ import annotations

import json
from typing import Any

import dp_accounting
import pytest
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from aivo_fl.ml.round.status import RoundStatus
from aivo_fl.registry import ContributionInput, FederatedUpdateInput, ModelRegistry, migrate
from tests.cli.conftest import RunCli

NOISED = [
    # the guide's defaults: everybody, z = 0.1
    dict(noise_multiplier=0.1, clip_norm=1.0, sample_rate=1.0, privacy_delta=1e-5),
    # sampled at q = 0.2 from 10 eligible learners, fixed clip
    dict(
        noise_multiplier=1.0,
        clip_norm=0.5,
        sample_rate=0.2,
        privacy_delta=1e-6,
        eligible_population=10,
        dp_denominator=2.0,
    ),
    # adaptive clipping: the count query's noise is charged too
    dict(
        noise_multiplier=1.2,
        clip_norm=0.8,
        sample_rate=0.5,
        privacy_delta=1e-6,
        eligible_population=10,
        dp_denominator=5.0,
        clip_target_quantile=0.5,
        quantile_noise_multiplier=0.5,
        clip_quantile_estimate=0.4,
    ),
    # the private gate's query, charged with the round
    dict(
        noise_multiplier=0.9,
        clip_norm=1.0,
        sample_rate=0.3,
        privacy_delta=1e-6,
        eligible_population=10,
        dp_denominator=3.0,
        gate_noise_multiplier=2.85,
    ),
]
UNNOISED = dict(dp_enabled=False, noise_multiplier=None, clip_norm=None, sample_rate=1.0, privacy_delta=None)


def _record(registry: ModelRegistry, population: list[str], sampled: list[str], **privacy: Any) -> None:
    contributions = [
        ContributionInput(
            learner,
            0.1 if learner in sampled else 0.0,
            0.3,
            False,
            None if learner in sampled else "not sampled this round",
            charged=True,
        )
        for learner in population
    ]
    contributions.append(ContributionInput("spent", 0.0, None, False, "privacy budget spent", charged=False))
    fields: dict[str, Any] = dict(
        base_version="1.0.0",
        new_version=None,
        status=RoundStatus.REJECTED,
        strategy="fedavg",
        learning_rate=1.0,
        contributions=contributions,
        performance_improvement=None,
        accuracy_before=None,
        accuracy_after=None,
        dp_enabled=True,
        epsilon_round=None,
        epsilon_total=None,
    )
    registry.record_federated_update(FederatedUpdateInput(**(fields | privacy)))


def _rounds(database_url: str, with_unnoised: bool) -> None:
    registry = ModelRegistry(database_url)
    migrate(registry.engine)
    learners = [f"l{i}" for i in range(10)]
    _record(registry, learners[:4], learners[:4], **NOISED[0])
    _record(registry, learners, ["l1", "l5"], **NOISED[1])
    if with_unnoised:
        _record(registry, learners[:3], learners[:3], **UNNOISED)
    _record(registry, learners[2:], ["l2", "l3", "l7"], **NOISED[2])
    _record(registry, learners, ["l4", "l8"], **NOISED[3])
    registry.engine.dispose()


def _independent_event(p: dict[str, Any]) -> dp_accounting.DpEvent | None:
    if not p["dpEnabled"] or not p["noiseMultiplier"]:
        return None
    # Gaussian queries on one sample (update, clip count, gate) = one Gaussian
    others = [p[k] for k in ("quantileNoiseMultiplier", "gateNoiseMultiplier") if p.get(k) is not None]
    z = sum(m**-2 for m in [p["noiseMultiplier"], *others]) ** -0.5
    gaussian = dp_accounting.GaussianDpEvent(z)
    return gaussian if p["sampleRate"] == 1.0 else dp_accounting.PoissonSampledDpEvent(p["sampleRate"], gaussian)


def _epsilon(updates: list[dict[str, Any]], delta: float, rdp: bool = False) -> float | None:
    """dp-accounting's PLD accountant (RDP with ``rdp``), one event per recorded round."""
    events = [_independent_event(u["privacy"]) for u in updates]
    if any(e is None for e in events):
        return None
    accountant = RdpAccountant() if rdp else PLDAccountant(value_discretization_interval=1e-3)
    for event in events:
        accountant.compose(event)
    return accountant.get_epsilon(delta)


def rederive(history: list[dict[str, Any]]) -> dict[str, Any]:
    """Every ledger figure of `stats --json`, from `history --json` alone."""
    delta = [u["privacy"]["delta"] for u in history if u["privacy"]["delta"] is not None][-1]
    last = history[-1]["privacy"]
    noised = [u for u in history if _independent_event(u["privacy"]) is not None]
    return {
        "worstCaseLearnerEpsilon": _epsilon(history, delta),
        "rdpCrossCheck": _epsilon(noised, delta, rdp=True) if len(noised) == len(history) else None,
        "delta": delta,
        "rounds": len(history),
        "noisedRounds": sum(_independent_event(u["privacy"]) is not None for u in history),
        "noiseMultiplier": last["noiseMultiplier"],
        "clipNorm": last["clipNorm"],
        "sampleRate": last["sampleRate"],
    }


@pytest.mark.parametrize("with_unnoised", [False, True], ids=["all-noised", "one-round-without-noise"])
def test_stats_is_rederived_from_history_alone(run_cli: RunCli, database_url: str, with_unnoised: bool) -> None:
    _rounds(database_url, with_unnoised)
    # Today's settings differ from every recorded round: they must not leak into the figures.
    env = {"DATABASE_URL": database_url, "NOISE_MULTIPLIER": "3.0", "CLIP_NORM": "9", "PRIVACY_DELTA": "1e-3"}
    history = json.loads(run_cli("history", "--json", env=env).stdout)
    privacy = json.loads(run_cli("stats", "--json", env=env).stdout)["privacy"]
    expected = rederive(history)
    for key, value in expected.items():
        if isinstance(value, float):
            # PLD: the product composes the unsampled round as one Gaussian in closed form first, so it
            # agrees with the library's discretized PLD to its discretization; RDP exactly.
            assert privacy[key] == pytest.approx(value, rel=1e-3 if key == "worstCaseLearnerEpsilon" else 1e-9), key
        else:
            assert privacy[key] == value, key
    # Under DP no learner is named: the draw and the population stay in the registry.
    assert all("withheld" in u["chargedLearners"] for u in history if u["privacy"]["dpEnabled"])
    private = [u for u in history if u["privacy"]["dpEnabled"]]
    assert not any(f'"l{i}"' in json.dumps(private) for i in range(10))
    if with_unnoised:
        assert privacy["worstCaseLearnerEpsilon"] is None
        assert "released without noise" in privacy["noGuarantee"]
    else:
        assert privacy["worstCaseLearnerEpsilon"] > 0 and privacy["noGuarantee"] is None
        assert privacy["rdpCrossCheck"] > privacy["worstCaseLearnerEpsilon"]  # PLD is the tighter


def test_text_output_says_no_guarantee_and_over_budget(run_cli: RunCli, sqlite_url: str) -> None:
    _rounds(sqlite_url, with_unnoised=True)
    env = {"DATABASE_URL": sqlite_url, "PRIVACY_EPSILON_BUDGET": "50"}
    stats = run_cli("stats", env=env)
    assert stats.returncode == 0, stats.stderr
    assert "Worst-case learner epsilon:" in stats.stdout and "no guarantee" in stats.stdout
    assert "✗ Over budget" in stats.stdout and "No privacy guarantee: 1 round(s) released without noise" in stats.stdout
    history = run_cli("history", env=env).stdout
    assert "Privacy: OFF (released without noise: no guarantee)" in history
    assert "sample rate 0.2 of 10 eligible (denominator 2)" in history
    assert "clip norm 0.8 (adaptive, target quantile 0.5)" in history


def test_within_budget_is_not_called_over(run_cli: RunCli, sqlite_url: str) -> None:
    _rounds(sqlite_url, with_unnoised=False)
    env = {"DATABASE_URL": sqlite_url, "PRIVACY_EPSILON_BUDGET": "1e6"}
    stats = json.loads(run_cli("stats", "--json", env=env).stdout)["privacy"]
    assert stats["overBudget"] is False and stats["epsilonBudget"] == 1e6
    tight = json.loads(run_cli("stats", "--json", env=env | {"PRIVACY_EPSILON_BUDGET": "1"}).stdout)["privacy"]
    assert tight["overBudget"] is True
