"""Power lost between a training batch's file writes and its `os.sync()`: the registry never
recorded the session, and some of the learner's new files reached the disk while its manifest is
the old one. Nothing is trusted that does not match the manifest, and the next run trains the
learner again (rebuilding its clone when the heads no longer match), never stuck on a hash mismatch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load

from aivo_fl.ml.samples import LearnerData
from aivo_fl.ml.store.cloning import DELTA_NAME, HEADS_NAME, learner_heads
from aivo_fl.ml.store.deltas import HASH_MISMATCH, DeltaRejected, load_delta
from aivo_fl.ml.store.safe_files import MANIFEST_NAME
from aivo_fl.ml.training.clones import train_learners
from aivo_fl.ml.training.local import LocalTrainingConfig
from aivo_fl.operations.app_simulation import simulate_activity, simulate_new_learners
from aivo_fl.operations.learners import clone_learners, split_interactions, train_learners_locally
from aivo_fl.operations.store import ModelStore
from aivo_fl.registry import ModelRegistry
from tests.trained import TrainedMain


@pytest.mark.parametrize("survived", [(DELTA_NAME,), (DELTA_NAME, HEADS_NAME)], ids=["delta", "delta+heads"])
def test_new_files_with_an_old_manifest_are_never_trusted_and_the_next_run_trains(
    survived: tuple[str, ...], tmp_path: Path, registry: ModelRegistry, trained_main: TrainedMain
) -> None:
    store = ModelStore(tmp_path / "main-aivo", tmp_path / "learners")
    trained_main.install(registry, store)
    learners = simulate_new_learners(registry, 3, interactions=40)
    clone_learners(registry, store, learners)
    assert not train_learners_locally(registry, store, learners, epochs=1).failures
    victim, folder = learners[0], store.learner_dir(learners[0])
    before = {name: (folder / name).read_bytes() for name in (DELTA_NAME, HEADS_NAME, MANIFEST_NAME)}
    [old_session] = [e for e in registry.get_eligible_for_aggregation(7) if e.learner_id == victim]

    # The batch of the week after writes the learner's files (no flush), then the power fails:
    # only `survived` reached the disk, and no session was recorded.
    simulate_activity(registry, learners, week=1)
    train, heldout = split_interactions(registry.get_interactions(victim))
    version = registry.get_active_version().version
    trained = train_learners(
        store.main_root,
        store.learners_root,
        [LearnerData(victim, train, heldout)],
        version,
        LocalTrainingConfig(epochs=1),
        sync=False,
    )
    assert not trained.failures
    for name in (DELTA_NAME, HEADS_NAME, MANIFEST_NAME):
        if name not in survived:
            (folder / name).write_bytes(before[name])

    # A round reading the old session's delta path refuses the new bytes: they are not what the manifest says.
    with pytest.raises(DeltaRejected) as rejected:
        load_delta(Path(old_session.delta_path), store.learners_root, _shapes(before), max_norm=1e6)
    assert rejected.value.reason == HASH_MISMATCH

    again = train_learners_locally(registry, store, learners, epochs=1)

    assert not again.failures and sorted(again.outcomes) == sorted(learners)
    assert list(again.rebuilt) == ([victim] if HEADS_NAME in survived else [])
    heads, _ = learner_heads(store.main_root, store.learners_root, victim)
    assert all(np.isfinite(t).all() for t in heads.values())
    [new_session] = [e for e in registry.get_eligible_for_aggregation(7) if e.learner_id == victim]
    load_delta(Path(new_session.delta_path), store.learners_root, _shapes(before), max_norm=1e6)  # trusted again


def _shapes(files: dict[str, bytes]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in load(files[DELTA_NAME]).items()}
