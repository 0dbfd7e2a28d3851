"""DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private Recurrent Language Models").

Mechanism, per round:

1. Clip every learner's whole delta (all head tensors together) to L2 norm ``clip_norm``.
2. Weight learner i by ``w_i = min(n_i / sample_cap, 1)`` (times factors <= 1, e.g. staleness).
   Weights are capped at 1 so that adding or removing one learner moves the weighted SUM by at
   most ``clip_norm`` in L2, whatever sample count that learner claims.
3. Add Gaussian noise with std ``noise_multiplier * clip_norm`` to every coordinate of the sum.
4. Divide by a FIXED denominator ``D`` (McMahan's ``qW``: the expected total weight of a round),
   not by the realised sum of weights. Then one learner moves the released average by at most
   ``clip_norm / D`` and the noise on the average is ``noise_multiplier * clip_norm / D``: the
   Gaussian mechanism with noise multiplier ``noise_multiplier`` at sensitivity 1 (in clip units).
   Dividing by the realised weight sum would make the denominator itself depend on the learner
   being added or removed, and the clean sensitivity bound would no longer hold.

Accounting uses dp-accounting's PLD (privacy loss distribution) accountant with
add-or-remove-one-learner adjacency
(user-level DP: the unit of privacy is a learner's entire contribution to a round). With
``LEARNER_SAMPLE_RATE`` q < 1 every eligible learner joins a round independently with probability
q (:mod:`aivo_fl.ml.privacy.sampling`) and the round is ``PoissonSampledDpEvent(q,
GaussianDpEvent(z))``; at q = 1 it is a plain ``GaussianDpEvent(z)``. What each round used is
recorded and recomposed by :mod:`aivo_fl.ml.privacy.ledger`. PLD is tight where RDP's conversion
to (epsilon, delta) is loose (about 11% over 52 rounds); the RDP figure is kept as a cross-check
(:func:`rdp_epsilon_for_events`, shown by ``stats --json``).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from aivo_fl.ml.aggregation.base import Delta, delta_norm

if TYPE_CHECKING:
    import dp_accounting

DEFAULT_DELTA = 1e-5
DEFAULT_SAMPLE_CAP = 8  # a learner with 8+ training interactions in the week gets full weight 1
EPSILON_WARNING_THRESHOLD = 10.0
BUDGET_SPENT = "privacy budget spent"


@dataclass(frozen=True)
class PrivacyEvent:
    """One DP round as the accountant sees it; persist these to keep totals across restarts."""

    noise_multiplier: float
    sampling_rate: float = 1.0

    def __post_init__(self) -> None:
        if not (self.noise_multiplier >= 0 and math.isfinite(self.noise_multiplier)):
            raise ValueError(f"noise_multiplier must be finite and >= 0, got {self.noise_multiplier}")
        if not 0.0 < self.sampling_rate <= 1.0:
            raise ValueError(f"sampling_rate must be in (0, 1], got {self.sampling_rate}")

    def dp_event(self) -> dp_accounting.DpEvent:
        import dp_accounting  # heavy (seconds): loaded when an epsilon is computed, not at CLI start

        gaussian = dp_accounting.GaussianDpEvent(self.noise_multiplier)
        if self.sampling_rate == 1.0:
            return gaussian
        return dp_accounting.PoissonSampledDpEvent(self.sampling_rate, gaussian)


class PrivacyBudgetExceeded(Exception):
    """The next round would push the composed epsilon over the configured budget.

    An epsilon of ``None`` means "no guarantee" (a round released without noise).
    """

    def __init__(
        self, spent: float | None, this_round: float | None, projected: float | None, budget: float, who: str = ""
    ) -> None:
        super().__init__(
            f"Privacy budget exceeded{who}: spent epsilon {_shown(spent)}, this round would cost "
            f"{_shown(this_round)} (total {_shown(projected)}), budget {budget:.4g}"
        )
        self.spent = spent
        self.this_round = this_round
        self.projected = projected
        self.budget = budget


def _shown(epsilon: float | None) -> str:
    return "no guarantee (released without noise)" if epsilon is None else f"{epsilon:.4g}"


class _ExcludedOrderFilter(logging.Filter):
    """dp-accounting logs a warning for every fractional RDP order whose series does not converge
    at small q; it then leaves that order out, which can only make epsilon larger (safe side)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("_compute_log_a_frac failed to converge")


logging.getLogger("absl").addFilter(_ExcludedOrderFilter())


# The PLD's grid of privacy-loss values. dp-accounting's default (1e-4) takes seconds per history at
# small sample rates; 1e-3 moves epsilon by under 0.3% on the preset's year, and the estimate stays
# pessimistic (an upper bound) either way.
PLD_DISCRETIZATION = 1e-3


def _counts(events: Iterable[PrivacyEvent]) -> tuple[tuple[PrivacyEvent, int], ...]:
    """A history as a sorted multiset: composition does not depend on order."""
    return tuple(sorted(Counter(events).items(), key=lambda item: (item[0].noise_multiplier, item[0].sampling_rate)))


def epsilon_for_events(events: Iterable[PrivacyEvent], delta: float = DEFAULT_DELTA) -> float:
    """Epsilon at ``delta`` of all ``events`` composed (PLD accountant); 0.0 for no events.

    A history's epsilon is computed once and cached (10,000 learners share a handful of histories).
    """
    counts = _counts(events)
    return _pld_epsilon_of_counts(counts, delta) if counts else 0.0


@lru_cache(maxsize=4096)
def _pld_epsilon_of_counts(counts: tuple[tuple[PrivacyEvent, int], ...], delta: float) -> float:
    """Unsampled rounds (q = 1) are Gaussian mechanisms, which compose exactly into one Gaussian; it
    enters the PLD as one event (alone: epsilon from its closed form, since the PLD of a Gaussian with
    tiny noise takes minutes to discretize)."""
    from dp_accounting import GaussianDpEvent
    from dp_accounting.pld import PLDAccountant

    sampled = [(event, count) for event, count in counts if event.sampling_rate < 1.0]
    gaussian = _composed_gaussian([(event, count) for event, count in counts if event.sampling_rate == 1.0])
    if not sampled and gaussian is not None:
        return gaussian_epsilon(gaussian, delta)
    accountant = PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)
    for event, count in sampled:
        accountant.compose(event.dp_event(), count)
    if gaussian is not None:
        accountant.compose(GaussianDpEvent(gaussian))
    return float(accountant.get_epsilon(delta))


def _composed_gaussian(counts: Sequence[tuple[PrivacyEvent, int]]) -> float | None:
    """The noise multiplier of one Gaussian equal to these Gaussians composed (None: there are none)."""
    if not counts:
        return None
    if any(event.noise_multiplier == 0 for event, _ in counts):
        return 0.0
    return float(sum(count * event.noise_multiplier**-2 for event, count in counts) ** -0.5)


def gaussian_epsilon(noise_multiplier: float, delta: float) -> float:
    """The tight epsilon of one Gaussian mechanism at sensitivity 1 (Balle and Wang 2018, through
    dp-accounting's closed-form privacy loss), by bisection on its delta(epsilon)."""
    from dp_accounting.pld.privacy_loss_mechanism import GaussianPrivacyLoss

    if noise_multiplier <= 0:
        return math.inf
    loss = GaussianPrivacyLoss(noise_multiplier, sensitivity=1.0)
    low, high = 0.0, 1.0
    while loss.get_delta_for_epsilon(high) > delta:
        low, high = high, 2 * high
    for _ in range(100):
        middle = (low + high) / 2
        low, high = (middle, high) if loss.get_delta_for_epsilon(middle) > delta else (low, middle)
    return high


def rdp_epsilon_for_events(events: Iterable[PrivacyEvent], delta: float = DEFAULT_DELTA) -> float:
    """The RDP accountant's epsilon for the same events: a looser cross-check of the PLD figure."""
    counts = _counts(events)
    return _epsilon_of_counts(counts, delta) if counts else 0.0


@lru_cache(maxsize=4096)
def _epsilon_of_counts(counts: tuple[tuple[PrivacyEvent, int], ...], delta: float) -> float:
    """RDP adds up over composed events, so each distinct event's RDP curve is computed once
    (:func:`_rdp_of`) and a history is a weighted sum of cached curves."""
    from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

    orders, _ = _rdp_of(counts[0][0])
    rdp = sum(count * _rdp_of(event)[1] for event, count in counts)
    return float(compute_epsilon(orders, rdp, delta)[0])


@lru_cache(maxsize=4096)
def _rdp_of(event: PrivacyEvent) -> tuple[tuple[float, ...], np.ndarray]:
    """(orders, RDP at each order) of one event, from dp-accounting's accountant."""
    from dp_accounting.rdp import RdpAccountant

    accountant = RdpAccountant()
    accountant.compose(event.dp_event())
    return tuple(accountant.orders), np.asarray(accountant.rdp, dtype=np.float64)


def epsilon_warning(epsilon: float, delta: float = DEFAULT_DELTA) -> str | None:
    """Plain-language warning when the guarantee is too weak to mean anything."""
    if epsilon <= EPSILON_WARNING_THRESHOLD:
        return None
    shown = "infinite" if math.isinf(epsilon) else f"{epsilon:.3g}"
    return (
        f"epsilon {shown} is far too large to give meaningful privacy (at delta {delta:g}): an observer "
        f"of the model updates could tell with near certainty whether a learner took part. Raise "
        f"NOISE_MULTIPLIER (about 1.0 or more) or lower the number of rounds to get epsilon below "
        f"{EPSILON_WARNING_THRESHOLD:g}."
    )


def clip_delta(
    delta: Mapping[str, np.ndarray], clip_norm: float, norm: float | None = None
) -> tuple[Delta, float, bool]:
    """Scale the whole delta so its L2 norm (across all tensors) is at most ``clip_norm``.

    ``norm`` is the delta's norm when the caller already has it (the delta reader computes it).
    """
    if not clip_norm > 0:
        raise ValueError(f"clip_norm must be > 0, got {clip_norm}")
    norm = delta_norm(delta) if norm is None else norm
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    clipped = {k: np.asarray(v, dtype=np.float64) * scale for k, v in delta.items()}
    return clipped, norm, scale < 1.0


def dp_weight(num_samples: int, sample_cap: int = DEFAULT_SAMPLE_CAP, factor: float = 1.0) -> float:
    """McMahan's capped weight min(n / cap, 1), times an extra factor in [0, 1] (e.g. staleness)."""
    if not 0.0 <= factor <= 1.0:
        raise ValueError(f"extra weight factor must be in [0, 1] under DP, got {factor}")
    return min(max(num_samples, 0) / sample_cap, 1.0) * factor


def noise_std(noise_multiplier: float, clip_norm: float) -> float:
    """Std of the Gaussian noise added to each coordinate of the weighted SUM."""
    return noise_multiplier * clip_norm
