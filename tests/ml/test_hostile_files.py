"""Hostile model files: each is refused with its stable reason before it is used, and a round completes.

Every kind of file the project reads is attacked the same way: a learner's delta (excluded from the
round), a main version's weights and a clone's heads (loading raises a clear ArtifactError).
A FIFO must not block: every test here runs under an alarm that fails it instead of hanging.
"""

from __future__ import annotations

import copy
import os
import shutil
import signal
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import torch

from aivo_fl.ml.round.candidate import RoundState, build_candidate
from aivo_fl.ml.round.gather import LearnerUpdate
from aivo_fl.ml.round.options import PrivacySettings, RoundOptions
from aivo_fl.ml.store import safe_files
from aivo_fl.ml.store.artifacts import (
    MAIN_WEIGHTS_NAME,
    ArtifactError,
    load_main_model,
    main_version_dir,
    save_artifact,
    save_main_model,
)
from aivo_fl.ml.store.cloning import (
    COPY_ON_WRITE,
    HEADS_NAME,
    CloneInfo,
    clone_for_learner,
    learner_heads,
    load_learner_model,
)
from aivo_fl.ml.store.learner_ids import InvalidLearnerId
from aivo_fl.ml.store.safe_files import FileRejected, read_verified
from tests.ml.delta_files import write_delta

SHAPES = {"heads.d.weight": (5, 8), "heads.d.bias": (5,), "heads.s.weight": (2, 8)}
NOW = datetime(2025, 3, 1, 12, tzinfo=UTC)
HUGE = 8 << 30  # a sparse 8 GiB file: reading it whole would exhaust memory


@pytest.fixture(autouse=True)
def no_hang() -> Iterator[None]:
    def hung(signum: int, frame: object) -> None:
        raise TimeoutError("a hostile file blocked the reader")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


# Each attack turns the file at ``target`` (inside ``store``) hostile; ``outside`` is outside the store.
Attack = Callable[[Path, Path, Path], None]


def _flip_last_byte(target: Path, store: Path, outside: Path) -> None:
    data = bytearray(target.read_bytes())
    data[-1] ^= 0x01
    target.write_bytes(bytes(data))


def _link_out(target: Path, store: Path, outside: Path) -> None:
    copy = outside / f"{target.parent.name}-{target.name}"  # the same bytes: the hash would match
    shutil.copyfile(target, copy)
    target.unlink()
    target.symlink_to(copy)


def _folder_link_out(target: Path, store: Path, outside: Path) -> None:
    copy = outside / f"folder-{target.parent.name}"
    shutil.copytree(target.parent, copy)
    shutil.rmtree(target.parent)
    target.parent.symlink_to(copy, target_is_directory=True)


def _link_in(target: Path, store: Path, outside: Path) -> None:
    copy = store / f"spare-{target.parent.name}-{target.name}"
    shutil.copyfile(target, copy)
    target.unlink()
    target.symlink_to(copy)


def _fifo(target: Path, store: Path, outside: Path) -> None:
    target.unlink()
    os.mkfifo(target)


def _dev_zero(target: Path, store: Path, outside: Path) -> None:
    target.unlink()
    target.symlink_to("/dev/zero")


def _appended(target: Path, store: Path, outside: Path) -> None:
    with target.open("ab") as fh:
        fh.write(b"\0" * 64)


def _sparse_huge(target: Path, store: Path, outside: Path) -> None:
    with target.open("r+b") as fh:
        fh.truncate(HUGE)


def _directory(target: Path, store: Path, outside: Path) -> None:
    target.unlink()
    target.mkdir()


FOLDER_OUT = "folder symlinked out of the store"
ATTACKS: dict[str, tuple[Attack, str]] = {
    "hash mismatch": (_flip_last_byte, safe_files.HASH_MISMATCH),
    "symlink out of the store": (_link_out, safe_files.OUTSIDE_STORE),
    FOLDER_OUT: (_folder_link_out, safe_files.OUTSIDE_STORE),
    "symlink inside the store": (_link_in, safe_files.SYMLINK),
    "fifo": (_fifo, safe_files.NOT_REGULAR),
    "/dev/zero via symlink": (_dev_zero, safe_files.OUTSIDE_STORE),
    "oversized": (_appended, safe_files.OVERSIZED),
    "sparse 8 GiB": (_sparse_huge, safe_files.OVERSIZED),
    "directory": (_directory, safe_files.NOT_REGULAR),
}


def _delta(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (0.1 * rng.standard_normal(s)).astype(np.float32) for k, s in SHAPES.items()}


def _round(store: Path, learners: list[str]) -> object:
    updates = [
        LearnerUpdate(learner, store / learner / "delta.safetensors", 100, "1.0.0", NOW - timedelta(hours=1), 0.0)
        for learner in learners
    ]
    return build_candidate(
        RoundState("1.0.0", {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}, ["1.0.0"], updates, store),
        RoundOptions(min_learners=3),
        PrivacySettings(enabled=True, noise_multiplier=1.0, clip_norm=1.0),
        NOW,
        np.random.default_rng(0),
    )


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    store, outside = tmp_path / "learners", tmp_path / "outside"
    store.mkdir()
    outside.mkdir()
    return store, outside


def test_every_hostile_delta_is_excluded_with_its_reason_and_the_round_completes(dirs: tuple[Path, Path]) -> None:
    store, outside = dirs
    good = [f"good-{i}" for i in range(3)]
    for i, learner in enumerate(good):
        write_delta(store, learner, _delta(i))
    bad = {}
    for i, (name, (attack, reason)) in enumerate(ATTACKS.items()):
        learner = f"bad-{i}"
        attack(write_delta(store, learner, _delta(100 + i)), store, outside)
        bad[learner] = (name, reason)

    result = _round(store, [*good, *bad])

    reasons = {c.learner_id: c.excluded_reason for c in result.contributions}
    assert reasons == {**dict.fromkeys(good), **{learner: reason for learner, (_, reason) in bad.items()}}
    assert [c.learner_id for c in result.included] == good
    assert all(c.weight == 0.0 and c.update_norm is None for c in result.excluded)
    assert result.candidate_heads is not None and result.privacy_record.event() is not None
    clean = _round(store, good)
    for name in SHAPES:
        np.testing.assert_array_equal(result.candidate_heads[name], clean.candidate_heads[name])


def test_a_path_that_climbs_out_of_the_store_is_refused(dirs: tuple[Path, Path]) -> None:
    store, outside = dirs
    write_delta(outside, "elsewhere", _delta(0))  # a valid delta with a valid manifest, outside
    climbing = store / "learner" / ".." / ".." / "outside" / "elsewhere" / "delta.safetensors"
    for path in (climbing, outside / "elsewhere" / "delta.safetensors"):
        with pytest.raises(FileRejected) as info:
            read_verified(store, path.parent, path.name)
        assert info.value.reason == safe_files.OUTSIDE_STORE


@pytest.mark.parametrize("name", ["zero", "null"])
def test_a_character_device_is_refused_before_it_is_read(name: str) -> None:
    # Inside a "store" rooted at /dev, so only the file-type check can refuse it.
    fd = safe_files.open_store_directory("/dev", "/dev")
    try:
        with pytest.raises(FileRejected) as info:
            safe_files.read_at(fd, name, 100, "/dev", "/dev")
    finally:
        os.close(fd)
    assert info.value.reason == safe_files.NOT_REGULAR and "character device" in str(info.value)


def test_missing_or_unlisted_files_are_refused(dirs: tuple[Path, Path]) -> None:
    store, _ = dirs
    path = write_delta(store, "a", _delta(0))
    with pytest.raises(FileRejected) as info:
        read_verified(store, path.parent, "heads.safetensors")
    assert info.value.reason == safe_files.NOT_IN_MANIFEST
    (path.parent / safe_files.MANIFEST_NAME).unlink()
    with pytest.raises(FileRejected) as info:
        read_verified(store, path.parent, path.name)
    assert info.value.reason == safe_files.MISSING


def _attack_id(name: str) -> str:
    return name.replace(" ", "-").replace("/", "")


@pytest.mark.parametrize("attack", list(ATTACKS), ids=[_attack_id(a) for a in ATTACKS])
def test_a_hostile_main_version_is_refused(tmp_path: Path, main_store: Path, attack: str) -> None:
    root, outside = tmp_path / "main", tmp_path / "outside"
    shutil.copytree(main_store, root)
    outside.mkdir()
    make_hostile, reason = ATTACKS[attack]
    make_hostile(main_version_dir(root, "1.0.0") / MAIN_WEIGHTS_NAME, root, outside)
    with pytest.raises(ArtifactError) as info:
        load_main_model(root, "1.0.0")
    assert isinstance(info.value, FileRejected) and info.value.reason == reason
    assert str(info.value).startswith(str(main_version_dir(root, "1.0.0"))) and reason in str(info.value)


def _trained_clone(main_store: Path, learners: Path, learner_id: str) -> CloneInfo:
    """A clone with its own heads file (what training leaves), the file the attacks below replace."""
    info = clone_for_learner(main_store, learners, learner_id, "1.0.0")
    heads, manifest = learner_heads(main_store, learners, learner_id)
    save_artifact(info.path, heads, {k: v for k, v in manifest.items() if k != COPY_ON_WRITE}, HEADS_NAME)
    return info


@pytest.mark.parametrize(
    "attack", [a for a in ATTACKS if a != FOLDER_OUT], ids=[_attack_id(a) for a in ATTACKS if a != FOLDER_OUT]
)
def test_a_hostile_clone_is_refused(tmp_path: Path, main_store: Path, attack: str) -> None:
    learners, outside = tmp_path / "learners", tmp_path / "outside"
    outside.mkdir()
    info_clone = _trained_clone(main_store, learners, "learner-1")
    make_hostile, reason = ATTACKS[attack]
    make_hostile(info_clone.path / HEADS_NAME, learners, outside)
    for load in (
        lambda: learner_heads(main_store, learners, "learner-1"),
        lambda: load_learner_model(main_store, learners, "learner-1"),
    ):
        with pytest.raises(ArtifactError) as info:
            load()
        assert isinstance(info.value, FileRejected) and info.value.reason == reason


def test_a_clone_folder_linked_out_of_the_store_is_refused(tmp_path: Path, main_store: Path) -> None:
    learners, outside = tmp_path / "learners", tmp_path / "outside"
    outside.mkdir()
    info_clone = _trained_clone(main_store, learners, "learner-1")
    _folder_link_out(info_clone.path / HEADS_NAME, learners, outside)
    # Refused by the learner-id check already (which also protects writes into the folder).
    with pytest.raises(InvalidLearnerId, match="resolves outside the learner store"):
        learner_heads(main_store, learners, "learner-1")


@pytest.mark.parametrize("attack", list(ATTACKS), ids=[_attack_id(a) for a in ATTACKS])
def test_a_copy_on_write_clone_refuses_a_hostile_main_version(tmp_path: Path, main_store: Path, attack: str) -> None:
    # The clone has no heads file: its heads are read from the main version, under the same rules.
    root, learners, outside = tmp_path / "main", tmp_path / "learners", tmp_path / "outside"
    shutil.copytree(main_store, root)
    outside.mkdir()
    clone_for_learner(root, learners, "learner-1", "1.0.0")
    make_hostile, reason = ATTACKS[attack]
    make_hostile(main_version_dir(root, "1.0.0") / MAIN_WEIGHTS_NAME, root, outside)
    for load in (
        lambda: learner_heads(root, learners, "learner-1"),
        lambda: load_learner_model(root, learners, "learner-1"),
    ):
        with pytest.raises(ArtifactError) as info:
            load()
        assert isinstance(info.value, FileRejected) and info.value.reason == reason


def test_a_copy_on_write_clone_refuses_a_main_file_it_was_not_cloned_from(
    tmp_path: Path, main_store: Path, trained_small: tuple
) -> None:
    # A main version replaced wholesale, manifest and all, is self-consistent, but not the file the
    # clone recorded: the clone's own record of its source hash refuses it.
    root, learners = tmp_path / "main", tmp_path / "learners"
    shutil.copytree(main_store, root)
    clone_for_learner(root, learners, "learner-1", "1.0.0")
    model, _ = trained_small
    other = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in other.heads.parameters():
            parameter.add_(0.25)
    shutil.rmtree(main_version_dir(root, "1.0.0"))
    save_main_model(root, "1.0.0", other, {}, data_seed=0)
    load_main_model(root, "1.0.0")  # the replaced version verifies on its own
    with pytest.raises(FileRejected) as info:
        learner_heads(root, learners, "learner-1")
    assert info.value.reason == safe_files.HASH_MISMATCH and "not the file learner 'learner-1' was cloned from" in str(
        info.value
    )
