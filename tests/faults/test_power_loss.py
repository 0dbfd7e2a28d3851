"""Power lost between a training batch's file writes and its `os.sync()`: the registry never
recorded the session, and the learner's new clone file reached the disk torn (its rename made it,
its data did not: cut short, or zeros). Nothing torn is trusted, and the next run trains the learner
again (its clone rebuilt from the active main version), never stuck on the damaged file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aivo_fl.ml.store.clone_file import CLONE_NAME
from aivo_fl.ml.store.cloning import learner_heads
from aivo_fl.ml.store.safe_files import ArtifactError
from aivo_fl.operations.app_simulation import simulate_new_learners
from aivo_fl.operations.learners import clone_learners, train_learners_locally
from aivo_fl.operations.store import ModelStore
from aivo_fl.registry import ModelRegistry
from tests.trained import TrainedMain


@pytest.mark.parametrize("torn", ["cut", "zeros"])
def test_a_torn_clone_file_is_never_trusted_and_the_next_run_trains(
    torn: str, tmp_path: Path, registry: ModelRegistry, trained_main: TrainedMain
) -> None:
    store = ModelStore(tmp_path / "main-aivo", tmp_path / "learners")
    trained_main.install(registry, store)
    learners = simulate_new_learners(registry, 3, interactions=40)
    clone_learners(registry, store, learners)
    assert not train_learners_locally(registry, store, learners, epochs=1).failures
    victim = learners[0]
    path = store.learner_dir(victim) / CLONE_NAME
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if torn == "cut" else bytes(len(data)))

    with pytest.raises(ArtifactError):
        learner_heads(store.main_root, store.learners_root, victim)

    again = train_learners_locally(registry, store, learners, epochs=1)

    assert not again.failures and sorted(again.outcomes) == sorted(learners)
    assert list(again.rebuilt) == [victim]
    heads, _ = learner_heads(store.main_root, store.learners_root, victim)
    assert all(np.isfinite(t).all() for t in heads.values())
