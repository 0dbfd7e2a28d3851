"""A trained clone is one safetensors file (personal tensors, update, manifest in its header), written
atomically and read under the hostile-file rules; a clone of the older three-file layout is read as it
is and rewritten as one file by its next training."""

from __future__ import annotations

import json
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from aivo_fl.ml.aggregation.base import shapes_of
from aivo_fl.ml.model import evaluate, load_head_state
from aivo_fl.ml.round.candidate import RoundState, build_candidate
from aivo_fl.ml.round.gather import LearnerUpdate
from aivo_fl.ml.round.options import PrivacySettings, RoundOptions
from aivo_fl.ml.samples import PRIMARY_HEAD
from aivo_fl.ml.simulation.world import generate_learner
from aivo_fl.ml.store import clone_file, safe_files
from aivo_fl.ml.store.artifacts import (
    ArtifactError,
    encode_tensors,
    load_main_model,
    main_head_tensors,
    save_artifact,
)
from aivo_fl.ml.store.clone_file import CLONE_NAME, encode_clone, read_clone
from aivo_fl.ml.store.cloning import (
    COPY_ON_WRITE,
    DELTA_NAME,
    HEADS_NAME,
    clone_for_learner,
    learner_heads,
    read_learner_manifest,
)
from aivo_fl.ml.store.deltas import DeltaReader, load_delta
from aivo_fl.ml.store.safe_files import MANIFEST_NAME, FileRejected
from aivo_fl.ml.training.clones import train_learner
from tests.ml.test_hostile_files import ATTACKS, FOLDER_OUT, _attack_id

NOW = datetime(2025, 3, 1, 12, tzinfo=UTC)


def _trained(main_store: Path, learners: Path, learner_id: str, seed: int = 0) -> Path:
    data = generate_learner(learner_id, seed=seed)
    clone_for_learner(main_store, learners, learner_id, "1.0.0")
    return train_learner(main_store, learners, learner_id, data.train, data.heldout, "1.0.0").delta_path


def test_a_trained_clone_is_one_standard_safetensors_file(tmp_path: Path, main_store: Path) -> None:
    learners = tmp_path / "learners"
    path = _trained(main_store, learners, "learner-1")

    assert path.name == CLONE_NAME and [p.name for p in path.parent.iterdir()] == [CLONE_NAME]
    raw = path.read_bytes()
    tensors = st_load(raw)  # any safetensors reader opens it
    (header_len,) = struct.unpack("<Q", raw[:8])
    metadata = json.loads(raw[8 : 8 + header_len])["__metadata__"]
    manifest = json.loads(metadata["manifest"])
    assert metadata["format"] == clone_file.CLONE_FORMAT and manifest["learner_id"] == "learner-1"
    assert manifest["last_training"]["delta_path"] == str(path) and COPY_ON_WRITE not in manifest
    heads, read_manifest = learner_heads(main_store, learners, "learner-1")
    assert read_manifest == manifest == read_learner_manifest(learners, "learner-1")
    for name, value in heads.items():
        np.testing.assert_array_equal(tensors[f"personal.{name}"], value)
    update, norm = load_delta(path, learners, shapes_of(heads), 1e3)
    for name, value in update.items():
        np.testing.assert_array_equal(tensors[f"update.{name}"], value)
    assert norm > 0
    flat = DeltaReader(learners, shapes_of(heads)).flat(path)
    np.testing.assert_array_equal(flat, np.concatenate([update[k].ravel() for k in sorted(update)]))


def _old_layout_clone(main_store: Path, learners: Path, learner_id: str) -> tuple[dict, dict]:
    """A trained clone as the older release left it: heads, delta and a manifest listing both."""
    info = clone_for_learner(main_store, learners, learner_id, "1.0.0")
    heads = {k: v + 0.01 for k, v in main_head_tensors(main_store, "1.0.0").items()}
    delta = {k: np.full_like(v, 0.001) for k, v in heads.items()}
    _, manifest = learner_heads(main_store, learners, learner_id)
    manifest = {k: v for k, v in manifest.items() if k != COPY_ON_WRITE}
    save_artifact(info.path, heads, manifest, HEADS_NAME, extra_files={DELTA_NAME: delta})
    return heads, delta


def test_an_old_three_file_clone_is_read_and_rewritten_as_one_file_by_its_next_training(
    tmp_path: Path, main_store: Path
) -> None:
    learners = tmp_path / "learners"
    heads, delta = _old_layout_clone(main_store, learners, "learner-old")
    folder = learners / "learner-old"
    assert sorted(p.name for p in folder.iterdir()) == sorted([DELTA_NAME, HEADS_NAME, MANIFEST_NAME])
    read, _ = learner_heads(main_store, learners, "learner-old")
    assert all(np.array_equal(read[k], heads[k]) for k in heads)
    old_update, _ = load_delta(folder / DELTA_NAME, learners, shapes_of(delta), 1e3)  # a round still reads it
    assert all(np.array_equal(old_update[k], delta[k]) for k in delta)

    data = generate_learner("learner-old", seed=3)
    result = train_learner(main_store, learners, "learner-old", data.train, data.heldout, "1.0.0")

    assert [p.name for p in folder.iterdir()] == [CLONE_NAME] and result.delta_path == folder.resolve() / CLONE_NAME
    trained, manifest = learner_heads(main_store, learners, "learner-old")
    assert manifest["last_training"]["accuracy_after"] == result.accuracy_after
    assert any(not np.array_equal(trained[k], heads[k]) for k in heads)
    # It trained on from its own (old-layout) heads: "before" is those heads on the held-out data.
    model, _ = load_main_model(main_store, "1.0.0")
    load_head_state(model, heads)
    assert result.accuracy_before == pytest.approx(evaluate(model, data.heldout)[PRIMARY_HEAD]["accuracy"])
    assert load_delta(result.delta_path, learners, shapes_of(delta), 1e3)[1] == pytest.approx(result.delta_norm)


def test_a_clone_file_left_beside_older_files_wins(tmp_path: Path, main_store: Path) -> None:
    # A crash between the rename of the new file and the removal of the old ones leaves both.
    learners = tmp_path / "learners"
    path = _trained(main_store, learners, "learner-1")
    expected, _ = learner_heads(main_store, learners, "learner-1")
    (path.parent / MANIFEST_NAME).write_text("{stale")
    (path.parent / HEADS_NAME).write_bytes(b"stale")
    heads, manifest = learner_heads(main_store, learners, "learner-1")
    assert manifest["learner_id"] == "learner-1" and all(np.array_equal(heads[k], expected[k]) for k in heads)


@pytest.mark.parametrize(
    "attack", [a for a in ATTACKS if a != FOLDER_OUT], ids=[_attack_id(a) for a in ATTACKS if a != FOLDER_OUT]
)
def test_a_hostile_clone_file_is_refused_with_its_reason(tmp_path: Path, main_store: Path, attack: str) -> None:
    learners, outside = tmp_path / "learners", tmp_path / "outside"
    outside.mkdir()
    path = _trained(main_store, learners, "learner-1")
    shapes = shapes_of(learner_heads(main_store, learners, "learner-1")[0])
    make_hostile, reason = ATTACKS[attack]
    make_hostile(path, learners, outside)
    for read in (
        lambda: learner_heads(main_store, learners, "learner-1"),
        lambda: DeltaReader(learners, shapes).flat(path),
        lambda: load_delta(path, learners, shapes, 1e3),
    ):
        with pytest.raises(ArtifactError) as info:
            read()
        assert isinstance(info.value, FileRejected) and info.value.reason == reason, info.value


def _rewrite(path: Path, edit) -> None:
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    data = raw[8 + header_len :]
    header, data = edit(header, data)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def _rehash(header: dict, data: bytes) -> tuple[dict, bytes]:
    header["__metadata__"]["sha256"] = safe_files.sha256_bytes(data)
    return header, data


def _wrong_shape(header: dict, data: bytes) -> tuple[dict, bytes]:
    name = next(k for k in header if k.startswith("update.") and len(header[k]["shape"]) == 2)
    rows, cols = header[name]["shape"]
    header[name]["shape"] = [cols, rows]
    return header, data


def _wrong_dtype(header: dict, data: bytes) -> tuple[dict, bytes]:
    name = next(k for k in header if k.startswith("update."))
    header[name]["dtype"] = "I32"
    return header, data


def _no_update(header: dict, data: bytes) -> tuple[dict, bytes]:
    kept = {k: v for k, v in header.items() if not k.startswith("update.")}
    end = max(v["data_offsets"][1] for k, v in kept.items() if k != "__metadata__")
    return _rehash(kept, data[:end])


def _renamed(header: dict, data: bytes) -> tuple[dict, bytes]:
    name = next(k for k in header if k.startswith("update."))
    header["update.extra"] = header.pop(name)
    return header, data


def _other_format(header: dict, data: bytes) -> tuple[dict, bytes]:
    header["__metadata__"]["format"] = "pickle"
    return header, data


def _reordered(header: dict, data: bytes) -> tuple[dict, bytes]:
    # Another writer's key order (still valid): read through the full parse, same values.
    return dict(reversed(list(header.items()))), data


HEADER_EDITS = {
    "wrong shape": (_wrong_shape, clone_file.WRONG_SHAPE),
    "wrong dtype": (_wrong_dtype, clone_file.WRONG_DTYPE),
    "no update": (_no_update, clone_file.NO_UPDATE),
    "wrong names": (_renamed, clone_file.WRONG_NAMES),
    "another format": (_other_format, safe_files.BAD_MANIFEST),
}


@pytest.mark.parametrize("edit", list(HEADER_EDITS), ids=[_attack_id(e) for e in HEADER_EDITS])
def test_a_crafted_header_is_refused_with_its_reason(tmp_path: Path, main_store: Path, edit: str) -> None:
    learners = tmp_path / "learners"
    path = _trained(main_store, learners, "learner-1")
    shapes = shapes_of(learner_heads(main_store, learners, "learner-1")[0])
    change, reason = HEADER_EDITS[edit]
    _rewrite(path, change)
    with pytest.raises(FileRejected) as info:
        DeltaReader(learners, shapes).flat(path)
    assert info.value.reason == reason, info.value


def test_duplicate_header_keys_are_refused_and_another_writers_order_is_read(tmp_path: Path, main_store: Path) -> None:
    learners = tmp_path / "learners"
    path = _trained(main_store, learners, "learner-1")
    shapes = shapes_of(learner_heads(main_store, learners, "learner-1")[0])
    before = DeltaReader(learners, shapes).flat(path).copy()
    _rewrite(path, _reordered)
    np.testing.assert_array_equal(DeltaReader(learners, shapes).flat(path), before)
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = raw[8 : 8 + header_len]
    first = header[1 : header.index(b"}") + 1]  # the first tensor entry, repeated
    doubled = header[:-1] + b"," + first + b"}"
    path.write_bytes(struct.pack("<Q", len(doubled)) + doubled + raw[8 + header_len :])
    with pytest.raises(FileRejected) as info:
        DeltaReader(learners, shapes).flat(path)
    assert info.value.reason == clone_file.NOT_SAFETENSORS


def test_a_plain_safetensors_file_without_the_metadata_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "learner-1"
    folder.mkdir()
    (folder / CLONE_NAME).write_bytes(st_save({"personal.w": np.zeros(3, np.float32)}))
    with pytest.raises(FileRejected) as info:
        read_clone(tmp_path, folder)
    assert info.value.reason == safe_files.BAD_MANIFEST
    (folder / CLONE_NAME).write_bytes(encode_tensors({"w": np.zeros(3, np.float32)}))
    with pytest.raises(FileRejected):
        read_clone(tmp_path, folder)


def test_a_round_reads_clone_files_and_excludes_the_hostile_one(tmp_path: Path, main_store: Path) -> None:
    learners = tmp_path / "learners"
    paths = [_trained(main_store, learners, f"learner-{i}", seed=i) for i in range(4)]
    heads = main_head_tensors(main_store, "1.0.0")
    data = bytearray(paths[3].read_bytes())
    data[-1] ^= 1
    paths[3].write_bytes(bytes(data))
    updates = [LearnerUpdate(p.parent.name, p, 50, "1.0.0", NOW - timedelta(hours=1), 0.0) for p in paths]
    result = build_candidate(
        RoundState("1.0.0", heads, ["1.0.0"], updates, learners),
        RoundOptions(min_learners=3),
        PrivacySettings(enabled=True, noise_multiplier=1.0, clip_norm=1.0),
        NOW,
        np.random.default_rng(0),
    )
    reasons = {c.learner_id: c.excluded_reason for c in result.contributions}
    assert reasons == {"learner-0": None, "learner-1": None, "learner-2": None, "learner-3": safe_files.HASH_MISMATCH}
    assert result.candidate_heads is not None


def test_the_encoder_writes_what_the_reader_reads(tmp_path: Path) -> None:
    personal = {"b": np.arange(3, dtype=np.float32), "a": np.ones((2, 2), np.float32)}
    update = {k: v * 0.5 for k, v in personal.items()}
    folder = tmp_path / "learner-1"
    folder.mkdir()
    (folder / CLONE_NAME).write_bytes(encode_clone(personal, update, {"kind": "learner-clone"}))
    for shapes in (None, shapes_of(personal)):
        clone = read_clone(tmp_path, folder, shapes)
        assert clone.manifest == {"kind": "learner-clone"}
        for name in personal:
            np.testing.assert_array_equal(clone.tensors("personal.")[name], personal[name])
            np.testing.assert_array_equal(clone.tensors("update.")[name], update[name])
        np.testing.assert_array_equal(clone.update_vector(), np.concatenate([update["a"].ravel(), update["b"]]))
