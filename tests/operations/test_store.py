"""ModelStore paths and the curriculum .npz round trip (no pickle)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aivo_fl.ml.simulation.world import generate_curriculum
from aivo_fl.ml.store.learner_ids import InvalidLearnerId
from aivo_fl.operations.store import ModelStore, load_samples, save_samples


def test_samples_round_trip_exactly(tmp_path: Path) -> None:
    samples = generate_curriculum(300, 7)
    path = tmp_path / "datasets" / "c.npz"
    save_samples(path, samples)
    loaded = load_samples(path)
    np.testing.assert_array_equal(loaded.features, samples.features)
    for head in samples.targets:
        np.testing.assert_array_equal(loaded.targets[head], samples.targets[head])
        np.testing.assert_array_equal(loaded.bayes_labels[head], samples.bayes_labels[head])
    assert not list(path.parent.glob(".*tmp*"))  # atomic write left no staging file


def test_a_pickled_object_in_the_dataset_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.npz"
    np.savez(path, features=np.array([object()], dtype=object))
    with pytest.raises(ValueError):
        load_samples(path)


def test_learner_dirs_stay_inside_the_store(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models" / "main-aivo", tmp_path / "models" / "learners")
    assert store.learner_dir("learner-1").parent == store.learners_root
    assert store.curriculum_path(10, 1) != store.curriculum_path(10, 2)
    assert store.curriculum_path(10, 1).parent == tmp_path / "models" / "datasets"
    for bad in ["../main-aivo", "a/b", "/etc", ".."]:
        with pytest.raises(InvalidLearnerId):
            store.learner_dir(bad)
