from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from aivo_fl.ml.aggregation.base import shapes_of
from aivo_fl.ml.model import evaluate, samples_to_tensors, trunk_state
from aivo_fl.ml.samples import PRIMARY_HEAD
from aivo_fl.ml.simulation.world import generate_cohort, generate_learner
from aivo_fl.ml.store.artifacts import ArtifactError, load_main_model, main_head_tensors, save_main_model
from aivo_fl.ml.store.clone_file import CLONE_NAME
from aivo_fl.ml.store.cloning import (
    DELTA_NAME,
    clone_for_learner,
    learner_heads,
    load_learner_model,
    rebase_clone,
    weight_delta,
)
from aivo_fl.ml.store.deltas import load_delta
from aivo_fl.ml.store.learner_ids import InvalidLearnerId
from aivo_fl.ml.training.batched import train_many
from aivo_fl.ml.training.clones import train_learner
from aivo_fl.ml.training.local import LearnerBatch, LocalTrainingConfig, learner_key, local_steps, personal_tensors


def test_trains_personal_layers_only_and_writes_delta(tmp_path: Path, depth_store: Path) -> None:
    main_store, learners = depth_store, tmp_path / "learners"
    data = generate_learner("learner-0007", seed=0)
    clone_for_learner(main_store, learners, data.learner_id, "1.0.0")
    trunk_before = trunk_state(load_learner_model(main_store, learners, data.learner_id)[0])

    result = train_learner(main_store, learners, data.learner_id, data.train, data.heldout, "1.0.0")

    model, manifest = load_learner_model(main_store, learners, data.learner_id)
    for key, value in trunk_state(model).items():
        np.testing.assert_array_equal(value, trunk_before[key])  # bit-identical
    assert result.samples == 150 and result.epochs == 5 and result.rebased_from is None
    assert result.delta_path == learners.resolve() / data.learner_id / CLONE_NAME
    assert [p.name for p in result.delta_path.parent.iterdir()] == [CLONE_NAME]  # one file per trained clone
    expected = weight_delta(main_store, learners, data.learner_id)
    stored, norm = load_delta(result.delta_path, learners, shapes_of(expected), 1e3)  # hash-checked
    assert norm == pytest.approx(result.delta_norm, rel=1e-6)
    assert stored.keys() == expected.keys()
    # A first session trains from main, so the update is the clone's own fit, step-normalized.
    scale = result.epochs / local_steps(result.samples, LocalTrainingConfig())
    assert scale == pytest.approx(0.2)  # 150 samples in batches of 32: 5 steps an epoch
    for key in expected:
        np.testing.assert_allclose(stored[key], expected[key] * scale, rtol=0, atol=1e-7)
    norm = np.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) * scale**2 for v in expected.values()))
    assert result.delta_norm == pytest.approx(norm, rel=1e-5) and result.delta_norm > 0
    after = evaluate(model, data.heldout)
    assert result.accuracy_after == pytest.approx(after[PRIMARY_HEAD]["accuracy"])
    assert result.started_at <= result.finished_at and result.seconds > 0
    assert manifest["last_training"]["accuracy_after"] == result.accuracy_after
    assert not [p for p in result.delta_path.parent.iterdir() if p.name.startswith(".")]


def test_personalized_clones_beat_main_on_their_heldout(tmp_path: Path, main_store: Path) -> None:
    learners = tmp_path / "learners"
    main, _ = load_main_model(main_store, "1.0.0")
    main_acc, clone_acc = [], []
    for data in generate_cohort(5, seed=0):
        clone_for_learner(main_store, learners, data.learner_id, "1.0.0")
        result = train_learner(main_store, learners, data.learner_id, data.train, data.heldout, "1.0.0")
        main_acc.append(evaluate(main, data.heldout)[PRIMARY_HEAD]["accuracy"])
        assert result.accuracy_before == pytest.approx(main_acc[-1])  # fresh clone == main
        clone_acc.append(result.accuracy_after)
    assert np.mean(clone_acc) > np.mean(main_acc) + 0.02  # 250 held-out interactions: +5 or more


def _versions_with_shifted_heads(main_root: Path, model: torch.nn.Module) -> torch.nn.Module:
    """Main 1.0.0 = `model`; 1.1.0 = the same trunk with shifted heads (what a round promotes). Returns 1.1.0."""
    save_main_model(main_root, "1.0.0", model, {}, data_seed=0)
    shifted, _ = load_main_model(main_root, "1.0.0")
    with torch.no_grad():
        for p in shifted.heads.parameters():
            p.add_(torch.linspace(-0.5, 0.5, p.numel()).view(p.shape))
    save_main_model(main_root, "1.1.0", shifted, {}, data_seed=0, parent_version="1.0.0")
    return shifted


def test_rebase_keeps_personalization(tmp_path: Path, trained_small) -> None:
    model, _ = trained_small
    main_root, learners = tmp_path / "main", tmp_path / "learners"
    shifted = _versions_with_shifted_heads(main_root, model)

    data = generate_learner("learner-0003", seed=0)
    clone_for_learner(main_root, learners, data.learner_id, "1.0.0")
    train_learner(main_root, learners, data.learner_id, data.train, data.heldout, "1.0.0")
    personal_heads, _ = learner_heads(main_root, learners, data.learner_id)

    old_main, new_main = main_head_tensors(main_root, "1.0.0"), main_head_tensors(main_root, "1.1.0")
    manifest = rebase_clone(main_root, learners, data.learner_id, "1.1.0")
    assert manifest["source_version"] == "1.1.0" and manifest["personalisation_kept"] is True
    heads, _ = learner_heads(main_root, learners, data.learner_id)
    offset = weight_delta(main_root, learners, data.learner_id)
    for key in personal_heads:
        # The learner's personal offset rides on the new main: it gets what the population taught
        # the main model and keeps what is its own.
        np.testing.assert_allclose(heads[key], new_main[key] + personal_heads[key] - old_main[key], atol=1e-6)
        np.testing.assert_allclose(offset[key], personal_heads[key] - old_main[key], atol=1e-6)
    assert not (learners / data.learner_id / DELTA_NAME).exists()  # the stale update is dropped
    with pytest.raises(ArtifactError, match="no update"):
        load_delta(learners / data.learner_id / CLONE_NAME, learners, shapes_of(heads), 1e3)

    # The next delta is the learner's data fitted from the new main, step-normalized: neither the
    # carried offset nor the clone's own progress is sent.
    result = train_learner(main_root, learners, data.learner_id, data.train, data.heldout, "1.1.0")
    assert result.rebased_from is None and result.source_version == "1.1.0"
    trained_heads, _ = learner_heads(main_root, learners, data.learner_id)
    stored, _ = load_delta(result.delta_path, learners, shapes_of(trained_heads), 1e3)
    main_model, _ = load_main_model(main_root, "1.1.0")
    config, main = LocalTrainingConfig(), personal_tensors(main_model)
    batch = LearnerBatch(learner_key(data.learner_id), *samples_to_tensors(data.train))
    from_main = train_many(main_model, [batch], [main], config)[0]
    scale = config.epochs / local_steps(len(data.train), config)
    for key in stored:
        np.testing.assert_allclose(stored[key], (from_main[key] - main[key]).numpy() * scale, atol=1e-6)
        assert not np.allclose(trained_heads[key], from_main[key].numpy(), atol=1e-4)  # the clone kept its own
    clone, _ = load_learner_model(main_root, learners, data.learner_id)
    assert result.accuracy_after == pytest.approx(evaluate(clone, data.heldout)[PRIMARY_HEAD]["accuracy"])

    # A learner whose clone is behind is rebased by train_learner itself.
    save_main_model(main_root, "1.2.0", shifted, {}, data_seed=0, parent_version="1.1.0")
    again = train_learner(main_root, learners, data.learner_id, data.train, data.heldout, "1.2.0")
    assert again.rebased_from == "1.1.0" and again.delta_norm > 0


def test_rebase_onto_a_retrained_trunk_restarts_from_the_new_heads(tmp_path: Path, trained_small) -> None:
    model, _ = trained_small
    main_root, learners = tmp_path / "main", tmp_path / "learners"
    save_main_model(main_root, "1.0.0", model, {}, data_seed=0)
    retrained, _ = load_main_model(main_root, "1.0.0")
    with torch.no_grad():
        for p in retrained.trunk.parameters():
            p.mul_(1.5)
    save_main_model(main_root, "2.0.0", retrained, {}, data_seed=0, parent_version="1.0.0")
    data = generate_learner("learner-0004", seed=0)
    clone_for_learner(main_root, learners, data.learner_id, "1.0.0")
    train_learner(main_root, learners, data.learner_id, data.train, data.heldout, "1.0.0")
    rebase_clone(main_root, learners, data.learner_id, "2.0.0")
    heads, manifest = learner_heads(main_root, learners, data.learner_id)
    assert manifest["personalisation_kept"] is False
    for key, value in main_head_tensors(main_root, "2.0.0").items():
        np.testing.assert_array_equal(heads[key], value)


def test_refuses_bad_ids_and_missing_clones(tmp_path: Path, main_store: Path) -> None:
    data = generate_learner("learner-0001", seed=0)
    with pytest.raises(InvalidLearnerId):
        train_learner(main_store, tmp_path, "../x", data.train, data.heldout, "1.0.0")
    with pytest.raises(ArtifactError, match="no clone"):
        train_learner(main_store, tmp_path, "learner-0001", data.train, data.heldout, "1.0.0")
    assert list(tmp_path.iterdir()) == []


def test_training_a_clone_that_is_behind_equals_rebasing_it_first(tmp_path: Path, trained_small) -> None:
    model, _ = trained_small
    main_root = tmp_path / "main"
    _versions_with_shifted_heads(main_root, model)
    data = generate_learner("learner-0005", seed=0)
    on_disk, in_memory = tmp_path / "rebased-first", tmp_path / "rebased-while-training"
    for learners in (on_disk, in_memory):
        clone_for_learner(main_root, learners, data.learner_id, "1.0.0")
        train_learner(main_root, learners, data.learner_id, data.train, data.heldout, "1.0.0")

    created = learner_heads(main_root, in_memory, data.learner_id)[1]["created_at"]
    rebase_clone(main_root, on_disk, data.learner_id, "1.1.0")
    first = train_learner(main_root, on_disk, data.learner_id, data.train, data.heldout, "1.1.0")
    second = train_learner(main_root, in_memory, data.learner_id, data.train, data.heldout, "1.1.0")

    assert first.rebased_from is None and second.rebased_from == "1.0.0"
    assert second.delta_norm == pytest.approx(first.delta_norm, rel=1e-6)
    (heads_a, manifest_a), (heads_b, manifest_b) = (
        learner_heads(main_root, root, data.learner_id) for root in (on_disk, in_memory)
    )
    for key in heads_a:
        np.testing.assert_allclose(heads_b[key], heads_a[key], atol=1e-6)
    for field in ("source_version", "source_sha256", "rebased_from", "personalisation_kept"):
        assert manifest_b[field] == manifest_a[field]
    assert manifest_b["created_at"] == created
