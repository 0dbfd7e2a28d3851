"""What a round reads from disk: each delta file once, and under sampling only the drawn learners'.

The opens are counted by the interpreter's own audit events (``os.open`` raises ``open``), so the
real readers run unchanged.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from aivo_fl.ml.privacy.ledger import RoundPrivacy, compose_rounds, planned_round
from aivo_fl.ml.privacy.mechanism import BUDGET_SPENT
from aivo_fl.ml.round.accounting import NOT_SAMPLED, PrivacyHistory
from aivo_fl.ml.round.candidate import RoundState, build_candidate
from aivo_fl.ml.round.gather import LearnerUpdate
from aivo_fl.ml.round.options import PrivacySettings, RoundOptions
from aivo_fl.ml.store import deltas
from aivo_fl.ml.store.cloning import DELTA_NAME
from aivo_fl.ml.store.safe_files import MANIFEST_NAME
from tests.ml.delta_files import write_delta

SHAPES = {"heads.d.weight": (5, 8), "heads.d.bias": (5,), "heads.s.weight": (2, 8)}
NOW = datetime(2025, 3, 1, 12, tzinfo=UTC)
DP = PrivacySettings(enabled=True, noise_multiplier=1.0, clip_norm=0.5)

_opened: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if event == "open" and _opened is not None and isinstance(args[0], str | bytes | os.PathLike):
        _opened.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)  # hooks cannot be removed: it records only inside ``opens()``


@contextmanager
def opens() -> Iterator[list[str]]:
    global _opened
    _opened = []
    try:
        yield _opened
    finally:
        _opened = None


def _delta(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (0.1 * rng.standard_normal(s)).astype(np.float32) for k, s in SHAPES.items()}


def _offer(store: Path, learners: list[str]) -> list[LearnerUpdate]:
    return [
        LearnerUpdate(learner, store / learner / DELTA_NAME, 50 + i, "1.0.0", NOW - timedelta(hours=1), 0.0)
        for i, learner in enumerate(learners)
    ]


def _round(store: Path, offered: list[LearnerUpdate], privacy: PrivacySettings, history: PrivacyHistory | None = None):  # type: ignore[no-untyped-def]
    base = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
    state = RoundState("1.0.0", base, ["1.0.0"], offered, store, history or PrivacyHistory())
    return build_candidate(state, RoundOptions(min_learners=1), privacy, NOW, np.random.default_rng(7))


def _store(tmp_path: Path, n: int) -> tuple[Path, list[str]]:
    store = tmp_path / "learners"
    learners = [f"learner-{i:02d}" for i in range(n)]
    for i, learner in enumerate(learners):
        write_delta(store, learner, _delta(i))
    return store, learners


def _corrupt(store: Path, learner: str) -> None:
    path = store / learner / DELTA_NAME
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # the manifest no longer vouches for it
    path.write_bytes(bytes(data))


def test_a_dp_fedavg_round_opens_each_delta_file_and_manifest_once(tmp_path: Path) -> None:
    store, learners = _store(tmp_path, 12)
    with opens() as opened:
        result = _round(store, _offer(store, learners), DP)
    assert len(result.included) == 12
    names = Counter(os.path.basename(p) for p in opened)
    assert names[DELTA_NAME] == 12 and names[MANIFEST_NAME] == 12
    assert Counter(p for p in opened if os.path.basename(p) in learners) == dict.fromkeys(
        (str(store / learner) for learner in learners), 1
    )


def test_under_sampling_only_the_drawn_learners_files_are_read(tmp_path: Path) -> None:
    store, learners = _store(tmp_path, 40)
    for learner in learners[::4]:  # ten hostile files, drawn or not
        _corrupt(store, learner)
    sampled = PrivacySettings(enabled=True, noise_multiplier=1.0, clip_norm=0.5, sample_rate=0.3)
    with opens() as opened:
        result = _round(store, _offer(store, learners), sampled)

    read = {os.path.basename(p) for p in opened if os.path.basename(p) in learners}
    by_id = {c.learner_id: c for c in result.contributions}
    drawn = {learner for learner, c in by_id.items() if c.excluded_reason != NOT_SAMPLED}
    assert read == drawn and 0 < len(drawn) < len(learners)
    assert sum(os.path.basename(p) == DELTA_NAME for p in opened) == len(drawn)
    for learner in learners[::4]:  # hostile: excluded for its file if drawn, else never even opened
        c = by_id[learner]
        assert c.excluded_reason == (deltas.HASH_MISMATCH if learner in drawn else NOT_SAMPLED)
        assert c.charged and c.update_norm is None and c.weight == 0.0  # in the population all the same
    # every learner who passed the metadata checks is in the population and pays for the round
    assert result.privacy.record.population == len(learners) and all(c.charged for c in result.contributions)
    assert {c.learner_id for c in result.included} == drawn - set(learners[::4])


def test_files_refused_at_rate_1_shrink_the_population_and_the_sum_stays_exact(tmp_path: Path) -> None:
    # Adaptive clipping charges more when the population is smaller. Learner 0's budget is set
    # between its charge with every offered learner and its charge without the two refused files:
    # it looks within budget before the files are read, and is over it once they are.
    store, learners = _store(tmp_path, 8)
    adaptive = PrivacySettings(enabled=True, noise_multiplier=1.0, clip_norm=0.5, clip_target_quantile=0.5)
    past = [RoundPrivacy(f"r{i}", True, 1.0, 0.5, delta=adaptive.delta) for i in range(3)]
    history = PrivacyHistory(past, {learners[0]: past})

    def charge(population: int) -> float:
        kw = dict(dp_enabled=True, noise_multiplier=1.0, clip_norm=0.5, sample_rate=1.0, delta=adaptive.delta)
        planned = planned_round("now", population=population, target_quantile=0.5, **kw)  # type: ignore[arg-type]
        return compose_rounds([*past, planned], adaptive.delta).epsilon or 0.0

    assert charge(6) > charge(8)
    budget = PrivacySettings(**{**adaptive.__dict__, "learner_epsilon_budget": (charge(6) + charge(8)) / 2})
    clean = _round(store, _offer(store, learners[:6]), budget, history)
    for learner in learners[6:]:
        _corrupt(store, learner)
    with opens() as opened:
        result = _round(store, _offer(store, learners), budget, history)

    reasons = {c.learner_id: c.excluded_reason for c in result.contributions}
    assert reasons == {
        learners[0]: BUDGET_SPENT,
        **dict.fromkeys(learners[1:6]),
        **dict.fromkeys(learners[6:], deltas.HASH_MISMATCH),
    }
    assert result.privacy.record.population == 5 == clean.privacy.record.population
    for name in SHAPES:  # learner 0 is out of the sum, exactly as in a round without the refused files
        np.testing.assert_array_equal(result.candidate_heads[name], clean.candidate_heads[name])
    refolded = Counter(os.path.basename(p) for p in opened)[DELTA_NAME]
    assert refolded == 8 + 5  # the rare case: the included deltas are folded again, once


@pytest.mark.parametrize("strategy", ["fedavg", "weighted"])
def test_the_fold_equals_the_weighted_mean_of_the_files(tmp_path: Path, strategy: str) -> None:
    store, learners = _store(tmp_path, 300)  # more than one buffer of rows (256)
    no_dp = PrivacySettings(enabled=False, noise_multiplier=0.0, clip_norm=1.0)
    offered = _offer(store, learners)
    base = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
    state = RoundState("1.0.0", base, ["1.0.0"], offered, store)
    # Plain model averaging (sgd 1.0): the candidate is the base plus the weighted mean itself.
    options = RoundOptions(strategy=strategy, server_optimizer="sgd", learning_rate=1.0)
    result = build_candidate(state, options, no_dp, NOW, np.random.default_rng(0))
    weights = np.array([c.weight for c in result.contributions])
    assert weights.sum() == pytest.approx(1.0) and len(set(weights.round(12))) > 1
    for name in SHAPES:
        stacked = np.stack([_delta(i)[name].astype(np.float64) for i in range(len(learners))])
        want = np.tensordot(weights, stacked, axes=1)
        np.testing.assert_allclose(result.candidate_heads[name], want.astype(np.float32), rtol=1e-6, atol=1e-7)
