"""The privacy figures `aivo-fl stats --json` reports, recomposed from the registry's records."""

from __future__ import annotations

from typing import Any

from aivo_fl.ml.privacy import PrivacyEvent, epsilon_for_events, epsilon_warning
from aivo_fl.ml.round.options import PrivacySettings
from aivo_fl.registry import ModelRegistry

ACCOUNTANT = "dp-accounting RDP (Gaussian mechanism, composed over rounds)"


def privacy_summary(registry: ModelRegistry, privacy: PrivacySettings) -> dict[str, Any]:
    """Epsilon spent so far and the largest per-learner epsilon.

    Totals are recomposed by the accountant from the recorded rounds on every call, so they
    survive restarts and can never drift from what was actually run.
    """
    delta = privacy.delta
    events = [PrivacyEvent(n.noise_multiplier, n.sample_rate) for n in registry.privacy_events()]
    spent = epsilon_for_events(events, delta)
    learner_eps = {
        learner: epsilon_for_events([PrivacyEvent(n.noise_multiplier, n.sample_rate) for n in noise], delta)
        for learner, noise in registry.learner_privacy_events().items()
    }
    worst = max(learner_eps.items(), key=lambda item: item[1], default=(None, 0.0))
    return {
        "enabled": privacy.enabled,
        "epsilonSpent": spent,
        "delta": delta,
        "epsilonBudget": privacy.epsilon_budget,
        "rounds": len(events),
        "noiseMultiplier": privacy.noise_multiplier,
        "clipNorm": privacy.clip_norm,
        # Learners are not sampled at random, so no amplification by sampling is claimed.
        "sampleRate": max((e.sampling_rate for e in events), default=1.0),
        "accountant": ACCOUNTANT,
        "maxLearnerEpsilon": worst[1],
        "maxLearnerEpsilonLearner": worst[0],
        "warning": epsilon_warning(spent, delta) if events else None,
    }
