from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from aivo_fl.ml.aggregation.base import delta_norm
from aivo_fl.ml.model import architecture_summary, build_model, frozen_layers_for, is_personal
from aivo_fl.ml.simulation.world import generate_learner
from aivo_fl.ml.store.artifacts import MAIN_WEIGHTS_NAME, load_main_model, main_head_tensors, main_version_dir
from aivo_fl.ml.store.clone_file import CLONE_NAME
from aivo_fl.ml.store.cloning import (
    COPY_ON_WRITE,
    clone_for_learner,
    learner_heads,
    load_learner_model,
    remove_learner,
    weight_delta,
)
from aivo_fl.ml.store.learner_ids import InvalidLearnerId, learner_dir, validate_learner_id
from aivo_fl.ml.store.safe_files import MANIFEST_NAME
from aivo_fl.ml.training.clones import train_learner

BAD_IDS = ["..", "../x", "/etc", "a/b", "a\\b", "a\x00b", "", "x" * 200, ".hidden", "a b", "é"]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_path_like_learner_ids_are_refused_and_nothing_written(tmp_path: Path, main_store: Path, bad: str) -> None:
    learners = tmp_path / "learners"
    with pytest.raises(InvalidLearnerId):
        validate_learner_id(bad)
    with pytest.raises(InvalidLearnerId):
        clone_for_learner(main_store, learners, bad, "1.0.0")
    assert not learners.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_valid_ids_and_learner_dir(tmp_path: Path) -> None:
    for ok in ["learner-0001", "a.b_c-D", "x" * 128]:
        assert learner_dir(tmp_path, ok) == tmp_path.resolve() / ok
    (tmp_path / "link").symlink_to("/tmp")  # a planted symlink must not lead out of the store
    with pytest.raises(InvalidLearnerId, match="outside"):
        learner_dir(tmp_path, "link")


def test_a_new_clone_is_a_copy_on_write_manifest_equal_to_main(tmp_path: Path, depth_store: Path) -> None:
    learners = tmp_path / "learners"
    info = clone_for_learner(depth_store, learners, "learner-0001", "1.0.0")
    assert info.source_version == "1.0.0" and info.path == learners.resolve() / "learner-0001"
    # Only a manifest: no weights of its own until the learner first trains.
    assert [p.name for p in info.path.iterdir()] == [MANIFEST_NAME]
    assert info.bytes_on_disk == (info.path / MANIFEST_NAME).stat().st_size < 5_000

    main, main_manifest = load_main_model(depth_store, "1.0.0")
    clone, manifest = load_learner_model(depth_store, learners, "learner-0001")
    assert manifest[COPY_ON_WRITE] is True and manifest["files"] == {}
    assert manifest["source_sha256"] == main_manifest["files"][MAIN_WEIGHTS_NAME]["sha256"]
    x = torch.randn(32, 256)
    with torch.no_grad():
        torch.testing.assert_close(clone(x), main(x), rtol=0, atol=0)
    assert manifest["source_version"] == "1.0.0"
    personal = {k for k in main.state_dict() if is_personal(main, k)}
    assert {k for k, p in clone.named_parameters() if p.requires_grad} == personal

    heads, _ = learner_heads(depth_store, learners, "learner-0001")
    assert set(heads) == personal  # the trainable layers, all of them, nothing frozen
    delta = weight_delta(depth_store, learners, "learner-0001")
    assert delta.keys() == heads.keys() and all(np.all(v == 0) for v in delta.values())

    s = info.architecture
    assert s == architecture_summary(clone)
    assert s.total_layers == s.frozen_layers + s.trainable_layers == 15
    assert s.total_params == s.frozen_params + s.trainable_params == sum(p.numel() for p in clone.parameters())
    assert s.trainable_params == sum(v.size for v in heads.values())
    assert manifest["frozen_layers"] == clone.layer_names()[: clone.frozen_layers]


def test_guide_depth_has_the_guides_counts() -> None:
    s = architecture_summary(build_model(frozen_layers=frozen_layers_for("guide")))
    assert (s.total_layers, s.frozen_layers, s.trainable_layers) == (15, 4, 11)
    assert (s.total_params, s.frozen_params, s.trainable_params) == (156_928, 67_584, 89_344)
    heads = architecture_summary(build_model(frozen_layers=frozen_layers_for("heads")))
    assert heads.total_params == 156_928 and heads.trainable_layers == 4 and heads.trainable_params < 2_000
    with pytest.raises(ValueError, match="unknown personalization depth"):
        frozen_layers_for("everything")


def test_copy_on_write_clones_diverge_on_first_training_without_touching_main(tmp_path: Path, main_store: Path) -> None:
    learners = tmp_path / "learners"
    main_files = {p.name: p.read_bytes() for p in main_version_dir(main_store, "1.0.0").iterdir()}
    main_heads = main_head_tensors(main_store, "1.0.0")
    trained, untouched = generate_learner("learner-a", seed=1), "learner-b"
    clone_for_learner(main_store, learners, trained.learner_id, "1.0.0")
    clone_for_learner(main_store, learners, untouched, "1.0.0")

    train_learner(main_store, learners, trained.learner_id, trained.train, trained.heldout, "1.0.0")

    own, manifest = learner_heads(main_store, learners, trained.learner_id)
    assert COPY_ON_WRITE not in manifest and "last_training" in manifest  # its own heads now
    assert [p.name for p in (learners / trained.learner_id).iterdir()] == [CLONE_NAME]
    assert any(not np.array_equal(own[k], main_heads[k]) for k in main_heads)
    assert delta_norm(weight_delta(main_store, learners, trained.learner_id)) > 0
    # The other clone and the main version are exactly as they were.
    shared, other_manifest = learner_heads(main_store, learners, untouched)
    assert other_manifest[COPY_ON_WRITE] is True
    assert all(np.array_equal(shared[k], main_heads[k]) for k in main_heads)
    assert {p.name: p.read_bytes() for p in main_version_dir(main_store, "1.0.0").iterdir()} == main_files


def test_clone_refuses_overwrite_and_remove(tmp_path: Path, main_store: Path) -> None:
    learners = tmp_path / "learners"
    clone_for_learner(main_store, learners, "learner-0002", "1.0.0")
    with pytest.raises(FileExistsError):
        clone_for_learner(main_store, learners, "learner-0002", "1.0.0")
    assert (learners / "learner-0002" / MANIFEST_NAME).exists()
    assert remove_learner(learners, "learner-0002") is True
    assert remove_learner(learners, "learner-0002") is False
    assert list(learners.iterdir()) == []
    with pytest.raises(InvalidLearnerId):
        remove_learner(learners, "..")
