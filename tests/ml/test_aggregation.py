"""Strategies against direct numpy computations, and robustness to corrupted learners."""

from __future__ import annotations

import numpy as np
import pytest

from aivo_fl.ml.aggregation.base import plan_blocks
from aivo_fl.ml.aggregation.strategies import (
    STRATEGIES,
    FedAvg,
    Median,
    TrimmedMean,
    Weighted,
    improvement_weight,
    strategy_named,
    trim_count,
)
from tests.ml.memory_source import Info, MemorySource

SHAPES = {"heads.x.weight": (5, 11), "heads.x.bias": (5,), "heads.y.weight": (3, 11), "heads.y.bias": (3,)}


def _cohort(n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()} for _ in range(n)]


def _stack(deltas: list[dict[str, np.ndarray]], name: str) -> np.ndarray:
    return np.stack([d[name].astype(np.float64) for d in deltas])


def test_fedavg_equals_sample_weighted_mean_exactly() -> None:
    deltas = _cohort(17)
    samples = np.random.default_rng(1).integers(1, 500, size=17)
    infos = [Info(int(n)) for n in samples]
    got = FedAvg().aggregate(MemorySource(deltas, SHAPES, infos))
    for name in SHAPES:
        want = np.average(_stack(deltas, name), axis=0, weights=samples)
        assert got[name].dtype == np.float64
        np.testing.assert_allclose(got[name], want, rtol=1e-12, atol=1e-14)
    assert FedAvg().weights(infos) == pytest.approx(list(samples / samples.sum()))


def test_fedavg_is_not_the_unweighted_mean() -> None:
    deltas = _cohort(3)
    got = FedAvg().aggregate(MemorySource(deltas, SHAPES, [Info(1), Info(1), Info(1000)]))
    assert np.allclose(got["heads.x.bias"], deltas[2]["heads.x.bias"], atol=1e-2)
    assert not np.allclose(got["heads.x.bias"], _stack(deltas, "heads.x.bias").mean(axis=0), atol=1e-2)


def test_staleness_discount_multiplies_the_weight() -> None:
    deltas = _cohort(2)
    got = FedAvg().aggregate(MemorySource(deltas, SHAPES, [Info(100, factor=1.0), Info(100, factor=0.5)]))
    want = (2 * _stack(deltas, "heads.y.bias")[0] + _stack(deltas, "heads.y.bias")[1]) / 3
    np.testing.assert_allclose(got["heads.y.bias"], want, rtol=1e-12)


def test_weighted_uses_samples_times_clamped_improvement() -> None:
    deltas = _cohort(4)
    infos = [Info(100, 0.10), Info(100, -0.30), Info(50, 0.05), Info(200, 0.0)]
    raw = [improvement_weight(i.num_samples, i.improvement) for i in infos]
    assert raw == pytest.approx([10.0, 1.0, 2.5, 2.0])  # negatives and zero hit the 0.01 floor
    got = Weighted().aggregate(MemorySource(deltas, SHAPES, infos))
    for name in SHAPES:
        want = np.average(_stack(deltas, name), axis=0, weights=raw)
        np.testing.assert_allclose(got[name], want, rtol=1e-12)
    assert Weighted().weights(infos) == pytest.approx([w / sum(raw) for w in raw])


def test_weighted_nan_improvement_counts_as_floor() -> None:
    assert improvement_weight(100, float("nan")) == pytest.approx(1.0)


@pytest.mark.parametrize("block_elems", [1, 7, 11, 64, 10_000])
def test_median_matches_numpy_for_any_block_size(block_elems: int) -> None:
    deltas = _cohort(9)
    got = Median().aggregate(MemorySource(deltas, SHAPES, block_elems=block_elems))
    for name in SHAPES:
        np.testing.assert_allclose(got[name], np.median(_stack(deltas, name), axis=0), rtol=1e-12)


@pytest.mark.parametrize("block_elems", [1, 13, 10_000])
def test_trimmed_mean_matches_direct_computation(block_elems: int) -> None:
    deltas = _cohort(20)
    got = TrimmedMean(0.1).aggregate(MemorySource(deltas, SHAPES, block_elems=block_elems))
    for name in SHAPES:
        ordered = np.sort(_stack(deltas, name), axis=0)
        np.testing.assert_allclose(got[name], ordered[2:18].mean(axis=0), rtol=1e-12)


def test_robust_strategies_are_unweighted_but_discount_staleness() -> None:
    infos = [Info(10**6, 0.5, 1.0), Info(1, 0.0, 0.25), Info(5, 0.0, 1.0)]
    for strategy in (Median(), TrimmedMean()):
        assert strategy.weights(infos) == pytest.approx([1 / 3, 0.25 / 3, 1 / 3])


def test_trim_count_keeps_something() -> None:
    assert [trim_count(n) for n in (1, 2, 3, 20, 21)] == [0, 0, 1, 2, 3]
    with pytest.raises(ValueError):
        trim_count(10, 0.5)


def test_robust_strategies_shrug_off_corrupted_learners_fedavg_does_not() -> None:
    honest = [{k: 0.1 + 0.01 * v.astype(np.float64) for k, v in d.items()} for d in _cohort(8)]
    corrupted = [{k: np.full(s, 1e3) for k, s in SHAPES.items()} for _ in range(2)]
    cohort = honest + corrupted  # 20% corrupted: trim 20% per side, median tolerates < 50%
    for strategy in (Median(), TrimmedMean(0.2)):
        got = strategy.aggregate(MemorySource(cohort, SHAPES))
        for name in SHAPES:
            assert np.all(np.abs(got[name] - 0.1) < 0.05), strategy.name
    mean = FedAvg().aggregate(MemorySource(cohort, SHAPES))
    assert np.all(mean["heads.x.bias"] > 100)


def test_plan_blocks_covers_every_coordinate_once() -> None:
    for block_elems in (1, 5, 11, 12, 40, 1000):
        blocks = plan_blocks(SHAPES, block_elems)
        seen = {name: np.zeros(s, int).reshape(-1) for name, s in SHAPES.items()}
        for block in blocks:
            assert block.size <= max(block_elems, 11)
            for seg in block.segments:
                seen[seg.name][seg.row_start * seg.row_size : seg.row_stop * seg.row_size] += 1
        assert all(np.all(v == 1) for v in seen.values())


def test_strategies_by_name() -> None:
    assert [strategy_named(n).name for n in STRATEGIES] == ["fedavg", "weighted", "trimmed_mean", "median"]
    assert strategy_named("median", 0.3) == Median(0.3)
    with pytest.raises(ValueError, match=r"fedavg, weighted, trimmed_mean, median"):
        strategy_named("krum")


def test_zero_total_weight_is_an_error() -> None:
    with pytest.raises(ValueError, match="zero"):
        FedAvg().aggregate(MemorySource(_cohort(1), SHAPES, [Info(0)]))
