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

Accounting uses dp-accounting's RDP accountant with add-or-remove-one-learner adjacency
(user-level DP: the unit of privacy is a learner's entire contribution to a round). With
``LEARNER_SAMPLE_RATE`` q < 1 every eligible learner joins a round independently with probability
q (:mod:`aivo_fl.ml.privacy.sampling`) and the round is ``PoissonSampledDpEvent(q,
GaussianDpEvent(z))``; at q = 1 it is a plain ``GaussianDpEvent(z)``. What each round used is
recorded and recomposed by :mod:`aivo_fl.ml.privacy.ledger`.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterable, Mapping
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


def epsilon_for_events(events: Iterable[PrivacyEvent], delta: float = DEFAULT_DELTA) -> float:
    """Epsilon at ``delta`` of all ``events`` composed (RDP accountant); 0.0 for no events.

    Composition does not depend on order, so a history is a multiset of events; its epsilon is
    computed once and cached (10,000 learners share a handful of distinct histories).
    """
    counts = tuple(sorted(Counter(events).items(), key=lambda item: (item[0].noise_multiplier, item[0].sampling_rate)))
    return _epsilon_of_counts(counts, delta) if counts else 0.0


@lru_cache(maxsize=4096)
def _epsilon_of_counts(counts: tuple[tuple[PrivacyEvent, int], ...], delta: float) -> float:
    """RDP adds up over composed events, so each distinct event's RDP curve is computed once
    (:func:`_rdp_of`) and a history is a weighted sum of cached curves: learners whose histories
    are different subsets of rounds (Poisson sampling, adaptive clipping, a population that changes
    every week: thousands of distinct histories) cost a vector sum each, not an accountant run
    (about a second each for six subsampled events)."""
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
