"""Strategies against direct numpy computations, and robustness to corrupted learners."""

from __future__ import annotations

import numpy as np
import pytest

from aivo_fl.ml.aggregation import (
    block_of,
    check_strategy,
    fedavg,
    improvement_weight,
    median,
    plan_blocks,
    raw_weight,
    trim_count,
    trimmed_mean,
    weighted,
)

SHAPES = {"heads.x.weight": (5, 11), "heads.x.bias": (5,), "heads.y.weight": (3, 11), "heads.y.bias": (3,)}


def _cohort(n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()} for _ in range(n)]


def _stack(deltas: list[dict[str, np.ndarray]], name: str) -> np.ndarray:
    return np.stack([d[name].astype(np.float64) for d in deltas])


def _blocks(deltas: list[dict[str, np.ndarray]], block_elems: int):  # type: ignore[no-untyped-def]
    for block in plan_blocks(SHAPES, block_elems):
        yield block, np.stack([block_of(d, block) for d in deltas]).astype(np.float64)


def test_fedavg_equals_sample_weighted_mean_exactly() -> None:
    deltas = _cohort(17)
    samples = np.random.default_rng(1).integers(1, 500, size=17)
    got = fedavg(((d, float(n)) for d, n in zip(deltas, samples, strict=True)), SHAPES)
    for name in SHAPES:
        want = np.average(_stack(deltas, name), axis=0, weights=samples)
        assert got[name].dtype == np.float64
        np.testing.assert_allclose(got[name], want, rtol=1e-12, atol=1e-14)


def test_fedavg_is_not_the_unweighted_mean() -> None:
    deltas = _cohort(3)
    got = fedavg(zip(deltas, [1.0, 1.0, 1000.0], strict=True), SHAPES)
    assert np.allclose(got["heads.x.bias"], deltas[2]["heads.x.bias"], atol=1e-2)
    assert not np.allclose(got["heads.x.bias"], _stack(deltas, "heads.x.bias").mean(axis=0), atol=1e-2)


def test_weighted_uses_samples_times_clamped_improvement() -> None:
    deltas = _cohort(4)
    samples = [100, 100, 50, 200]
    improvements = [0.10, -0.30, 0.05, 0.0]
    weights = [improvement_weight(n, g) for n, g in zip(samples, improvements, strict=True)]
    assert weights == pytest.approx([10.0, 1.0, 2.5, 2.0])  # negatives and zero hit the 0.01 floor
    assert min(weights) > 0
    got = weighted(zip(deltas, weights, strict=True), SHAPES)
    for name in SHAPES:
        want = np.average(_stack(deltas, name), axis=0, weights=weights)
        np.testing.assert_allclose(got[name], want, rtol=1e-12)


def test_weighted_nan_improvement_counts_as_floor() -> None:
    assert improvement_weight(100, float("nan")) == pytest.approx(1.0)


@pytest.mark.parametrize("block_elems", [1, 7, 11, 64, 10_000])
def test_median_matches_numpy_for_any_block_size(block_elems: int) -> None:
    deltas = _cohort(9)
    got = median(_blocks(deltas, block_elems), SHAPES)
    for name in SHAPES:
        np.testing.assert_allclose(got[name], np.median(_stack(deltas, name), axis=0), rtol=1e-12)


@pytest.mark.parametrize("block_elems", [1, 13, 10_000])
def test_trimmed_mean_matches_direct_computation(block_elems: int) -> None:
    deltas = _cohort(20)
    got = trimmed_mean(_blocks(deltas, block_elems), SHAPES, trim_fraction=0.1)
    for name in SHAPES:
        ordered = np.sort(_stack(deltas, name), axis=0)
        np.testing.assert_allclose(got[name], ordered[2:18].mean(axis=0), rtol=1e-12)


def test_trim_count_keeps_something() -> None:
    assert trim_count(1) == 0
    assert trim_count(2) == 0
    assert trim_count(3) == 1
    assert trim_count(20) == 2
    assert trim_count(21) == 3


def test_robust_strategies_shrug_off_corrupted_learners_fedavg_does_not() -> None:
    honest = [{k: 0.1 + 0.01 * v.astype(np.float64) for k, v in d.items()} for d in _cohort(8)]
    corrupted = [{k: np.full(s, 1e3) for k, s in SHAPES.items()} for _ in range(2)]
    cohort = honest + corrupted  # 20% corrupted: trim 20% per side, median tolerates < 50%
    robust = {
        "median": median(_blocks(cohort, 16), SHAPES),
        "trimmed_mean": trimmed_mean(_blocks(cohort, 16), SHAPES, trim_fraction=0.2),
    }
    for label, got in robust.items():
        for name in SHAPES:
            assert np.all(np.abs(got[name] - 0.1) < 0.05), label
    mean = fedavg(((d, 1.0) for d in cohort), SHAPES)
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


def test_unknown_strategy_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"fedavg, weighted, trimmed_mean, median"):
        check_strategy("krum")
    assert raw_weight("fedavg", 40, 0.5) == 40.0
    assert raw_weight("median", 40, 0.5) == 1.0


def test_zero_total_weight_is_an_error() -> None:
    with pytest.raises(ValueError, match="zero"):
        fedavg([(_cohort(1)[0], 0.0)], SHAPES)
