from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from aivo_fl.ml.artifacts import load_main_model
from aivo_fl.ml.cloning import (
    HEADS_NAME,
    clone_for_learner,
    load_learner_model,
    remove_learner,
    weight_delta,
)
from aivo_fl.ml.learner_ids import InvalidLearnerId, learner_dir, validate_learner_id
from aivo_fl.ml.model import architecture_summary, build_model, frozen_layers_for, is_personal

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


def test_clone_stores_only_personal_tensors_and_matches_main(tmp_path: Path, depth_store: Path) -> None:
    learners = tmp_path / "learners"
    info = clone_for_learner(depth_store, learners, "learner-0001", "1.0.0")
    assert info.source_version == "1.0.0" and info.path == learners.resolve() / "learner-0001"
    on_disk = {}
    for f in info.path.glob("*.safetensors"):
        on_disk.update(load_file(f))
    main, _ = load_main_model(depth_store, "1.0.0")
    personal = {k for k in main.state_dict() if is_personal(main, k)}
    assert on_disk and set(on_disk) == personal  # only the trainable layers, all of them
    assert info.bytes_on_disk == sum(p.stat().st_size for p in info.path.iterdir())

    clone, manifest = load_learner_model(depth_store, learners, "learner-0001")
    x = torch.randn(32, 256)
    with torch.no_grad():
        torch.testing.assert_close(clone(x), main(x), rtol=0, atol=0)
    assert manifest["source_version"] == "1.0.0"
    assert {k for k, p in clone.named_parameters() if p.requires_grad} == personal

    delta = weight_delta(depth_store, learners, "learner-0001")
    assert delta.keys() == on_disk.keys() and all(np.all(v == 0) for v in delta.values())

    s = info.architecture
    assert s == architecture_summary(clone)
    assert s.total_layers == s.frozen_layers + s.trainable_layers == 15
    assert s.total_params == s.frozen_params + s.trainable_params == sum(p.numel() for p in clone.parameters())
    assert s.trainable_params == sum(v.size for v in on_disk.values())
    assert manifest["frozen_layers"] == clone.layer_names()[: clone.frozen_layers]


def test_guide_depth_has_the_guides_counts() -> None:
    s = architecture_summary(build_model(frozen_layers=frozen_layers_for("guide")))
    assert (s.total_layers, s.frozen_layers, s.trainable_layers) == (15, 4, 11)
    assert (s.total_params, s.frozen_params, s.trainable_params) == (156_928, 67_584, 89_344)
    heads = architecture_summary(build_model(frozen_layers=frozen_layers_for("heads")))
    assert heads.total_params == 156_928 and heads.trainable_layers == 4 and heads.trainable_params < 2_000
    with pytest.raises(ValueError, match="unknown personalization depth"):
        frozen_layers_for("everything")


def test_clone_refuses_overwrite_and_remove(tmp_path: Path, main_store: Path) -> None:
    learners = tmp_path / "learners"
    clone_for_learner(main_store, learners, "learner-0002", "1.0.0")
    with pytest.raises(FileExistsError):
        clone_for_learner(main_store, learners, "learner-0002", "1.0.0")
    assert (learners / "learner-0002" / HEADS_NAME).exists()
    assert remove_learner(learners, "learner-0002") is True
    assert remove_learner(learners, "learner-0002") is False
    assert list(learners.iterdir()) == []
    with pytest.raises(InvalidLearnerId):
        remove_learner(learners, "..")
