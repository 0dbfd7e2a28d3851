"""The privacy planner: the noise and sample rate that meet an epsilon target over a year of rounds.

For a population of N eligible learners and a few sample rates q, it finds the smallest noise
multiplier z whose round, as the ledger would record it (the update query, adaptive clipping's
count and the private gate's query composed, Poisson-sampled at q), composed ``rounds`` times with
the PLD accountant stays within the target epsilon at ``delta``. The noise on the released average
is ``z x clip norm / (q x N)``: relative to the clip norm, ``z / (q N)``.

It recommends the SMALLEST sample rate whose relative noise is within ``max_relative_noise``: the
fewest learners a round (least work on devices, most amplification) that keep the average useful.
The default bound, 1e-3, is the noise the user-level preset of the previous release gave at 10,000
learners (z = 1 on an expected cohort of 1,000).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from aivo_fl.ml.privacy.adaptive_clipping import DEFAULT_INITIAL_CLIP_NORM
from aivo_fl.ml.privacy.ledger import compose_rounds, planned_round
from aivo_fl.ml.privacy.mechanism import rdp_epsilon_for_events
from aivo_fl.ml.privacy.sampling import expected_cohort

SAMPLE_RATES = (0.01, 0.02, 0.05, 0.1, 0.2)
DEFAULT_MAX_RELATIVE_NOISE = 1e-3
_Z_LOW, _Z_HIGH = 0.05, 400.0  # bisection bracket for the noise multiplier


@dataclass(frozen=True)
class PlanRow:
    sample_rate: float
    noise_multiplier: float  # the update query's (NOISE_MULTIPLIER)
    expected_cohort: float
    relative_noise: float  # noise std on the released average / clip norm
    epsilon: float  # recomposed at the chosen noise (<= the target)
    useful: bool  # relative noise within the bound


@dataclass(frozen=True)
class Plan:
    target_epsilon: float
    rounds: int
    delta: float
    population: int
    max_relative_noise: float
    rows: tuple[PlanRow, ...]
    recommended: PlanRow | None
    population_needed: int | None  # when nothing is useful: the smallest population that would be

    def line(self) -> str:
        """The plan in one sentence (the recommendation, or what the target would need)."""
        if self.recommended is None:
            return (
                f"epsilon {self.target_epsilon:g} over {self.rounds} rounds at delta {self.delta:g} is out of reach "
                f"for {self.population:,} learners: it needs about {self.population_needed:,} eligible learners "
                f"(noise on the average at most {self.max_relative_noise:g} of the clip norm)"
            )
        r = self.recommended
        return (
            f"sample rate {r.sample_rate:g} with noise multiplier {r.noise_multiplier:.3g}: expected cohort "
            f"{r.expected_cohort:,.0f}, noise on the average {r.relative_noise:.2g} of the clip norm, epsilon "
            f"{r.epsilon:.3g} over {self.rounds} rounds at delta {self.delta:g}"
        )


def year_epsilon(
    noise_multiplier: float,
    sample_rate: float,
    population: int,
    rounds: int,
    delta: float,
    adaptive: bool = True,
    *,
    rdp: bool = False,
) -> float:
    """Epsilon of ``rounds`` identical rounds as the ledger records them (PLD; ``rdp``: the looser RDP)."""
    record = planned_round(
        "planned",
        dp_enabled=True,
        noise_multiplier=noise_multiplier,
        clip_norm=DEFAULT_INITIAL_CLIP_NORM,
        sample_rate=sample_rate,
        population=population,
        delta=delta,
        target_quantile=0.5 if adaptive else None,
    )
    if rdp:
        event = record.event()
        return math.inf if event is None else rdp_epsilon_for_events([event] * rounds, delta)
    total = compose_rounds([record] * rounds, delta).epsilon
    return math.inf if total is None else total


def _smallest(meets: Callable[[float], bool], low: float, high: float, precision: float) -> float:
    """The smallest z in [low, high] (to ``precision``, relative) with ``meets(z)``, given ``meets(high)``."""
    if meets(low):
        return low
    while high / low > 1 + precision:
        middle = math.sqrt(low * high)
        low, high = (low, middle) if meets(middle) else (middle, high)
    return high


@lru_cache(maxsize=256)
def noise_for_target(
    target_epsilon: float, sample_rate: float, population: int, rounds: int, delta: float, adaptive: bool = True
) -> float | None:
    """The smallest noise multiplier (to 1%) meeting the target with PLD; None if none does.

    RDP bounds PLD from above, so its (fast) answer brackets the PLD search: PLD's noise is at most
    RDP's and, over a year of rounds, not under 60% of it."""
    args = (sample_rate, population, rounds, delta, adaptive)
    if year_epsilon(_Z_HIGH, *args, rdp=True) > target_epsilon:
        return None
    z_rdp = _smallest(lambda z: year_epsilon(z, *args, rdp=True) <= target_epsilon, _Z_LOW, _Z_HIGH, 0.1)
    return _smallest(lambda z: year_epsilon(z, *args) <= target_epsilon, max(_Z_LOW, 0.6 * z_rdp), z_rdp, 0.01)


def plan(
    target_epsilon: float,
    rounds: int,
    population: int,
    delta: float,
    *,
    sample_rates: Sequence[float] = SAMPLE_RATES,
    max_relative_noise: float = DEFAULT_MAX_RELATIVE_NOISE,
    adaptive: bool = True,
) -> Plan:
    if not (target_epsilon > 0 and rounds >= 1 and population >= 1):
        raise ValueError("the plan needs a target epsilon > 0, rounds >= 1 and a population >= 1")
    args = (target_epsilon, rounds, population, delta, sample_rates, max_relative_noise)
    rows = _rows(*args, adaptive)
    useful = [r for r in rows if r.useful]
    recommended = min(useful, key=lambda r: r.sample_rate) if useful else None
    needed = None
    if recommended is None:
        # A cohort of a handful leaves adaptive clipping's count almost unnoised: no noise on the update
        # reaches the target; the fixed-clip rows still say how many learners the target needs.
        needed = _population_needed(rows or _rows(*args, False), max_relative_noise)
    return Plan(target_epsilon, rounds, delta, population, max_relative_noise, tuple(rows), recommended, needed)


def _rows(
    target_epsilon: float,
    rounds: int,
    population: int,
    delta: float,
    sample_rates: Sequence[float],
    max_relative_noise: float,
    adaptive: bool,
) -> list[PlanRow]:
    rows = []
    for rate in sample_rates:
        z = noise_for_target(target_epsilon, rate, population, rounds, delta, adaptive)
        if z is None:
            continue
        cohort = expected_cohort(rate, population)
        epsilon = year_epsilon(z, rate, population, rounds, delta, adaptive)
        rows.append(PlanRow(rate, z, cohort, z / cohort, epsilon, z / cohort <= max_relative_noise))
    return rows


def _population_needed(rows: Sequence[PlanRow], max_relative_noise: float) -> int:
    """z barely depends on N (only through the count query's noise), so at rate q the noise bound
    needs about z / (q x bound) learners; the smallest over the rates, rounded up to a hundred."""
    best = min(r.noise_multiplier / (r.sample_rate * max_relative_noise) for r in rows)
    return int(math.ceil(best / 100.0) * 100)
