"""Aggregation strategies behind one protocol, as Flower shapes them: pure numpy, streaming.

A strategy turns a round's validated learner updates into one aggregate delta. It reads them
through an :class:`UpdateSource`, which never holds every learner's delta at once:

* sum strategies (:class:`FedAvg`, :class:`Weighted`) take one learner's delta at a time into a
  float64 running sum (memory: one delta);
* coordinate-wise robust strategies (:class:`TrimmedMean`, :class:`Median`) take one block of
  coordinates of every learner at a time (memory: learners x block).

Differential privacy is a wrapper around a sum strategy (:class:`DpClipped`), not a branch inside
each one. Robust strategies are unweighted on purpose: a corrupted learner could claim any sample
count (they only apply the staleness discount).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np

from aivo_fl.ml.aggregation.base import Block, Delta, FlatSum, assemble, flatten
from aivo_fl.ml.privacy.mechanism import DEFAULT_SAMPLE_CAP, dp_weight, noise_std

TRIM_FRACTION = 0.1  # per side
IMPROVEMENT_FLOOR = 0.01  # one accuracy point: a non-improving learner still counts a little
IMPROVEMENT_FULL_WEIGHT = 0.10  # under DP: ten accuracy points of local gain earn the full weight


class UpdateInfo(Protocol):
    """What a strategy may know about a learner's update besides its delta."""

    @property
    def num_samples(self) -> int: ...
    @property
    def improvement(self) -> float: ...  # accuracy gain on the learner's own held-out data
    @property
    def factor(self) -> float: ...  # staleness discount in (0, 1]


class UpdateSource(Protocol):
    """A round's validated updates, readable one learner at a time or one coordinate block at a time."""

    @property
    def shapes(self) -> Mapping[str, tuple[int, ...]]: ...
    @property
    def infos(self) -> Sequence[UpdateInfo]: ...
    def deltas(self) -> Iterator[Delta]: ...  # in the order of ``infos``, one alive at a time
    def blocks(self, scales: Sequence[float]) -> Iterator[tuple[Block, np.ndarray]]: ...  # (learners x block)


class Strategy(Protocol):
    name: str

    def weights(self, updates: Sequence[UpdateInfo]) -> list[float]:
        """Each learner's coefficient in the aggregate (what the registry records per learner)."""
        ...

    def aggregate(self, source: UpdateSource) -> Delta: ...


def improvement_weight(num_samples: int, improvement: float, floor: float = IMPROVEMENT_FLOOR) -> float:
    """Samples x local improvement, clamped to a positive floor: no learner gets a negative weight
    (which would push the model *away* from its update), and a cohort where nobody improved degrades
    gracefully to FedAvg. NaN counts as the floor."""
    if floor <= 0:
        raise ValueError(f"floor must be > 0, got {floor}")
    gain = improvement if improvement == improvement else floor
    return float(num_samples) * max(float(gain), floor)


def improvement_factor(improvement: float, floor: float = IMPROVEMENT_FLOOR) -> float:
    """Improvement mapped into [floor / 0.10, 1] by FIXED constants, for use under DP.

    DP needs every learner's weight <= 1 without looking at other learners (normalising by the
    cohort's best improvement would let one learner change everybody's weight).
    """
    gain = improvement if improvement == improvement else floor
    return min(max(float(gain), floor) / IMPROVEMENT_FULL_WEIGHT, 1.0)


@dataclass(frozen=True)
class FedAvg:
    """FedAvg (McMahan et al. 2017): the sample-weighted mean of the learners' deltas."""

    name: ClassVar[str] = "fedavg"

    def raw_weight(self, update: UpdateInfo) -> float:
        return float(update.num_samples) * update.factor

    def bounded_factor(self, update: UpdateInfo) -> float:
        """The strategy's own weight factor in [0, 1], for :class:`DpClipped`'s capped weights."""
        return 1.0

    def weights(self, updates: Sequence[UpdateInfo]) -> list[float]:
        raw = [self.raw_weight(u) for u in updates]
        total = sum(raw)
        return [w / total for w in raw]

    def coefficient(self, update: UpdateInfo, norm: float) -> float:
        """The learner's coefficient in the running sum (``norm``: its delta's L2 norm)."""
        return self.raw_weight(update)

    def finish(self, acc: FlatSum) -> Delta:
        """The aggregate from the running sum of every included update."""
        if acc.weight <= 0:
            raise ValueError("cannot average: total weight is zero")
        return {name: total / acc.weight for name, total in acc.tensors().items()}

    def aggregate(self, source: UpdateSource) -> Delta:
        return self.finish(fold(self, source))


@dataclass(frozen=True)
class Weighted(FedAvg):
    """Improvement-weighted averaging: a learner whose local training helped its own held-out
    accuracy more pulls harder (samples x clamped improvement)."""

    name: ClassVar[str] = "weighted"
    floor: float = IMPROVEMENT_FLOOR

    def raw_weight(self, update: UpdateInfo) -> float:
        return improvement_weight(update.num_samples, update.improvement, self.floor) * update.factor

    def bounded_factor(self, update: UpdateInfo) -> float:
        return improvement_factor(update.improvement, self.floor)


def trim_count(num_learners: int, trim_fraction: float = TRIM_FRACTION) -> int:
    """Values dropped per side: ceil(fraction x n) so that 3+ learners always lose their extremes,
    but never so many that nothing is left."""
    if not 0.0 <= trim_fraction < 0.5:
        raise ValueError(f"trim_fraction must be in [0, 0.5), got {trim_fraction}")
    k = math.ceil(trim_fraction * num_learners)
    return max(0, min(k, (num_learners - 1) // 2))


@dataclass(frozen=True)
class TrimmedMean:
    """Coordinate-wise trimmed mean (Yin et al. 2018): per coordinate, drop the k largest and k
    smallest learner values and average the rest."""

    name: ClassVar[str] = "trimmed_mean"
    trim_fraction: float = TRIM_FRACTION

    def weights(self, updates: Sequence[UpdateInfo]) -> list[float]:
        return [u.factor / len(updates) for u in updates]

    def aggregate(self, source: UpdateSource) -> Delta:
        scales = [u.factor for u in source.infos]
        return assemble(source.shapes, ((block, self.reduce(m)) for block, m in source.blocks(scales)))

    def reduce(self, matrix: np.ndarray) -> np.ndarray:
        """(learners, block) -> (block,)."""
        n = matrix.shape[0]
        if n == 0:
            raise ValueError("no learners to aggregate")
        k = trim_count(n, self.trim_fraction)
        return np.sort(matrix, axis=0)[k : n - k].mean(axis=0, dtype=np.float64)


@dataclass(frozen=True)
class Median(TrimmedMean):
    """Coordinate-wise median (Yin et al. 2018): each coordinate ignores up to half the learners."""

    name: ClassVar[str] = "median"

    def reduce(self, matrix: np.ndarray) -> np.ndarray:
        if matrix.shape[0] == 0:
            raise ValueError("no learners to aggregate")
        return np.median(matrix, axis=0)


SumStrategy = FedAvg  # Weighted is a FedAvg: both fold deltas into a weighted running sum
SUM_STRATEGIES: tuple[str, ...] = (FedAvg.name, Weighted.name)
ROBUST_STRATEGIES: tuple[str, ...] = (TrimmedMean.name, Median.name)
STRATEGIES: tuple[str, ...] = SUM_STRATEGIES + ROBUST_STRATEGIES


def strategy_named(name: str, trim_fraction: float = TRIM_FRACTION) -> Strategy:
    """The plain (non-private) strategy called ``name``."""
    if name == Weighted.name:
        return Weighted()
    if name == FedAvg.name:
        return FedAvg()
    if name == TrimmedMean.name:
        return TrimmedMean(trim_fraction)
    if name == Median.name:
        return Median(trim_fraction)
    raise ValueError(f"Unknown aggregation strategy {name!r}; valid strategies: {', '.join(STRATEGIES)}")


@dataclass(frozen=True)
class DpClipped:
    """DP-FedAvg (McMahan et al. 2018) around a sum strategy; see :mod:`aivo_fl.ml.privacy.mechanism`.

    Each learner's whole delta is clipped to ``clip_norm``; its weight is capped at 1
    (``min(n / sample_cap, 1)`` times the inner strategy's factor and the staleness discount, all
    <= 1), so one learner moves the weighted sum by at most ``clip_norm``; Gaussian noise of std
    ``noise_multiplier * clip_norm`` is added to the sum, which is divided by the FIXED
    ``denominator`` (never by the realised weight sum, which would depend on the learner).
    Without ``rng`` nothing is released: the clipped average comes back without noise (a dry run).
    """

    inner: SumStrategy
    clip_norm: float
    noise_multiplier: float
    denominator: float
    sample_cap: int = DEFAULT_SAMPLE_CAP
    rng: np.random.Generator | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.inner, FedAvg):
            raise ValueError(
                f"strategy {self.inner.name!r} cannot be combined with differential privacy: DP-FedAvg's "
                f"sensitivity bound covers clipped weighted sums only; use one of {', '.join(SUM_STRATEGIES)}"
            )
        if not (self.clip_norm > 0 and self.sample_cap > 0 and self.denominator > 0):
            raise ValueError("clip_norm, sample_cap and the denominator must be > 0 under differential privacy")

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def released_noise_std(self) -> float:
        """Std of the noise on each coordinate of the released average."""
        return noise_std(self.noise_multiplier, self.clip_norm) / self.denominator

    def capped_weight(self, update: UpdateInfo) -> float:
        return dp_weight(update.num_samples, self.sample_cap, update.factor * self.inner.bounded_factor(update))

    def weights(self, updates: Sequence[UpdateInfo]) -> list[float]:
        return [self.capped_weight(u) / self.denominator for u in updates]

    def coefficient(self, update: UpdateInfo, norm: float) -> float:
        """The capped weight times the clipping scale: the delta scaled to norm <= ``clip_norm``."""
        scale = min(1.0, self.clip_norm / norm) if norm > 0 else 1.0
        return self.capped_weight(update) * scale

    def finish(self, acc: FlatSum) -> Delta:
        """Noise on the clipped weighted sum (tensor by tensor, in name order), over the FIXED denominator."""
        std = noise_std(self.noise_multiplier, self.clip_norm)
        rng = self.rng
        return {
            name: (total + rng.normal(0.0, std, size=total.shape) if rng is not None else total) / self.denominator
            for name, total in acc.tensors().items()
        }

    def aggregate(self, source: UpdateSource) -> Delta:
        return self.finish(fold(self, source))


class SumCoefficient(Protocol):
    def coefficient(self, update: UpdateInfo, norm: float) -> float: ...


def fold(strategy: SumCoefficient, source: UpdateSource) -> FlatSum:
    """Every delta of ``source`` into one running sum with the strategy's coefficients."""
    acc = FlatSum(source.shapes)
    for update, delta in zip(source.infos, source.deltas(), strict=True):
        squared = acc.stage(flatten(delta, acc.layout))
        acc.commit(strategy.coefficient(update, math.sqrt(squared)))
    return acc
