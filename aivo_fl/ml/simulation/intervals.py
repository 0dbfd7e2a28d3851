"""Confidence intervals for accuracies measured on learners, over one or several seeds.

An accuracy here is a ratio of sums (correct predictions / interactions) over a set of learners, and
learners differ (their own shift, their own amount of data): interactions of one learner are not
independent, so the unit to resample is the learner, not the interaction. Over several seeds (each
its own population, cohort, round-0 model and round randomness) the seeds are resampled too: a
two-stage (hierarchical) bootstrap, seeds with replacement, then learners within each drawn seed.

A statistic is any function of the per-seed accuracies of a few quantities measured on the SAME
learners (the main model at round r and at round 0, an oracle, ...), so a gap closed or a paired
difference keeps its pairing: every quantity sees the same resampled learners.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_REPLICATES = 2_000
CONFIDENCE = 0.95

# (replicates, quantities) accuracies -> (replicates,) statistic values
Statistic = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Counts:
    """One seed's measurements: ``correct[l, q]`` of quantity q on learner l, out of ``total[l]``."""

    correct: np.ndarray  # (learners, quantities)
    total: np.ndarray  # (learners,)

    def __post_init__(self) -> None:
        if self.correct.ndim != 2 or self.correct.shape[0] != len(self.total) or len(self.total) == 0:
            raise ValueError("counts: need correct (learners, quantities) and total (learners,), learners >= 1")

    def accuracies(self) -> np.ndarray:
        """(quantities,) pooled accuracies."""
        return self.correct.sum(axis=0) / self.total.sum()


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    seeds: int

    @property
    def covers_zero(self) -> bool:
        return self.low <= 0.0 <= self.high

    def as_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "low": self.low, "high": self.high, "seeds": self.seeds}


def _replicates(counts: Counts, statistic: Statistic, replicates: int, rng: np.random.Generator) -> np.ndarray:
    """(replicates,) values of ``statistic`` with this seed's learners resampled with replacement."""
    n = len(counts.total)
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=replicates).astype(np.float64)
    totals = weights @ counts.total
    accuracies = (weights @ counts.correct) / np.maximum(totals, 1e-12)[:, None]
    return statistic(accuracies)


def bootstrap(
    per_seed: Sequence[Counts],
    statistic: Statistic = lambda a: a[:, 0],
    replicates: int = DEFAULT_REPLICATES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> Interval:
    """Mean over seeds of ``statistic`` with its percentile interval (seeds, then learners, resampled)."""
    if not per_seed:
        raise ValueError("bootstrap: need at least one seed")
    rng = np.random.default_rng([seed, 31])
    point = float(np.mean([statistic(c.accuracies()[None, :])[0] for c in per_seed]))
    within = np.stack([_replicates(c, statistic, replicates, rng) for c in per_seed])  # (seeds, replicates)
    drawn = rng.integers(0, len(per_seed), size=(replicates, len(per_seed)))  # seeds drawn per replicate
    values = within[drawn, np.arange(replicates)[:, None]].mean(axis=1)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return Interval(point, float("nan"), float("nan"), len(per_seed))
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return Interval(point, float(low), float(high), len(per_seed))


def difference(a: np.ndarray) -> np.ndarray:
    """Quantity 0 minus quantity 1 (a paired difference)."""
    return a[:, 0] - a[:, 1]


def gap_closed(a: np.ndarray) -> np.ndarray:
    """(quantity 0 - quantity 1) / (quantity 2 - quantity 1): model, round 0, yardstick."""
    span = a[:, 2] - a[:, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(span > 0, (a[:, 0] - a[:, 1]) / span, np.nan)


def stack(*measured: np.ndarray, total: np.ndarray) -> Counts:
    """Counts of several quantities measured on the same learners (each a (learners,) array)."""
    return Counts(np.stack([np.asarray(m, dtype=np.float64) for m in measured], axis=1), total.astype(np.float64))


def verdict(interval: Interval, unit: float = 100.0, suffix: str = " pp") -> str:
    """A paired difference as a reader should take it."""
    text = f"{unit * interval.mean:+.2f}{suffix} [{unit * interval.low:+.2f}, {unit * interval.high:+.2f}]"
    return f"{text}: no measurable difference" if interval.covers_zero else text
