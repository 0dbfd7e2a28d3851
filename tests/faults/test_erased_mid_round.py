"""A learner deleted in the app and erased while a round runs: before the round reads their delta
(it is gone: excluded) or after (it was read). Either way the round completes and records nothing
of theirs: no contribution row, no id in its figures, no file, nothing left for erasure to find."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from aivo_fl.ml.round.options import PrivacySettings, RoundOptions
from aivo_fl.operations.aggregation import run_federated_aggregation
from aivo_fl.operations.app_simulation import simulate_new_learners
from aivo_fl.operations.erasure import erase_everywhere
from aivo_fl.operations.learners import clone_learners, train_learners_locally
from aivo_fl.operations.store import ModelStore
from aivo_fl.registry import ModelRegistry
from aivo_fl.registry.schema import FederatedUpdate, FederatedUpdateContribution
from tests.app_side import delete_learner_in_app
from tests.trained import TrainedMain

KEY = b"an-erasure-key-for-tests"
# The round's progress lines: after it read who trained (before any delta), after it judged (all read).
BEFORE_READING = "Learners trained in the last"
AFTER_READING = "Validation:"


@pytest.mark.parametrize("when", [BEFORE_READING, AFTER_READING], ids=["before-delta-read", "after-delta-read"])
def test_a_learner_erased_while_a_round_reads_their_delta(
    when: str, tmp_path: Path, registry: ModelRegistry, trained_main: TrainedMain
) -> None:
    store = ModelStore(tmp_path / "main-aivo", tmp_path / "learners")
    trained_main.install(registry, store)
    learners = simulate_new_learners(registry, 5, interactions=40)
    clone_learners(registry, store, learners)
    assert not train_learners_locally(registry, store, learners, epochs=1).failures
    gone = learners[2]
    erased: list[str] = []

    def report(line: str) -> None:
        if line.startswith(when) and not erased:  # the app deletes them; the erasure job runs at once
            delete_learner_in_app(registry, gone)
            erased.append(erase_everywhere(registry, store, gone, KEY, tmp_path / "aggregation.log").pseudonym)

    outcome = run_federated_aggregation(
        registry,
        store,
        PrivacySettings(enabled=True, noise_multiplier=0.5, clip_norm=1.0),
        RoundOptions(min_learners=2, learning_rate=1e-6),
        report=report,
        rng=np.random.default_rng(0),
    )

    assert erased and outcome.update_id is not None
    assert gone not in _everything_recorded(registry)
    [update] = registry.get_federated_updates()
    assert sorted(update["contributingLearners"]) == sorted(set(learners) - {gone})
    assert not store.learner_dir(gone).exists()
    assert registry.deleted_learner_ids() == []  # nothing of theirs came back for erasure to find


def _everything_recorded(registry: ModelRegistry) -> str:
    """Every row of the round, as text."""
    with registry.engine.connect() as conn:
        rows: list[Callable[[], object]] = [
            *conn.execute(sa.select(FederatedUpdate.__table__)).mappings(),
            *conn.execute(sa.select(FederatedUpdateContribution.__table__)).mappings(),
        ]
    return json.dumps([dict(r) for r in rows], default=str) + json.dumps(registry.get_federated_updates(), default=str)
