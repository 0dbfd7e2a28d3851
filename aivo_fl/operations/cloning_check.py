"""The activation guide's cloning test, step by step, on the real store and registry."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from aivo_fl.ml.aggregation.base import delta_norm
from aivo_fl.ml.model import is_personal
from aivo_fl.ml.store.artifacts import load_main_model
from aivo_fl.ml.store.cloning import (
    CloneInfo,
    clone_for_learner,
    load_learner_model,
    remove_learner,
    stored_tensor_names,
    weight_delta,
)
from aivo_fl.operations.errors import OperationFailed, diagnose
from aivo_fl.operations.learners import MainModelMissing, personalized_model_metadata
from aivo_fl.operations.store import ModelStore
from aivo_fl.registry import ModelRegistry

Report = Callable[[str], None]


class CloningCheckFailed(OperationFailed):
    def __init__(self, step: int, name: str, cause: Exception) -> None:
        # The step's cause keeps its own exit code ("Main model not found" is 4 everywhere).
        diagnosis = diagnose(cause)
        super().__init__(f"Step {step} failed ({name}): {diagnosis.line}", diagnosis.exit_code)


@dataclass
class _State:
    version: str = ""
    clone: CloneInfo | None = None


def run_cloning_check(registry: ModelRegistry, store: ModelStore, report: Report = print) -> CloneInfo:
    """Clone a throw-away test learner and verify the clone; removes the test learner afterwards."""
    learner_id = f"test-learner-{int(time.time())}"
    state = _State()
    report("=== Testing Model Cloning ===")
    try:
        _step(
            1, "Verifying main model exists", report, lambda: _main_exists(registry, store, state), "Main model found"
        )
        _step(2, "Initializing cloner and registry", report, registry.check_connection, "Initialized")
        _step(
            3,
            "Cloning model for test learner",
            report,
            lambda: _clone(store, learner_id, state),
            "Model cloned successfully",
        )
        assert state.clone is not None
        _report_clone(learner_id, state.clone, report)
        _step(
            4,
            "Checking frozen vs trainable layers",
            report,
            lambda: _frozen_split(store, learner_id),
            "Bottom layers frozen, upper layers trainable, no frozen weights stored",
        )
        _step(
            5,
            "Comparing weights with main model",
            report,
            lambda: _same_weights(store, learner_id, state),
            "Clone weights equal the main model's",
        )
        _step(
            6,
            "Extracting weight deltas",
            report,
            lambda: _zero_delta(store, learner_id),
            "Delta extracted (zero right after cloning)",
        )
        _step(
            7,
            "Registering in ModelRegistry",
            report,
            lambda: _register(registry, learner_id, state),
            "Registered and read back",
        )
    finally:
        remove_learner(store.learners_root, learner_id)
        registry.delete_personalized_model(learner_id)
    report("")
    report(f"(test learner {learner_id} removed again)")
    report("✓ All tests passed!")
    return state.clone


def _report_clone(learner_id: str, clone: CloneInfo, report: Report) -> None:
    arch = clone.architecture
    report("")
    report("Clone Information:")
    for label, value in [
        ("Learner ID", learner_id),
        ("Source Version", clone.source_version),
        ("Total Layers", arch.total_layers),
        ("Frozen Layers", arch.frozen_layers),
        ("Trainable Layers", arch.trainable_layers),
        ("Total Parameters", f"{arch.total_params:,}"),
        ("Trainable Parameters", f"{arch.trainable_params:,}"),
        ("Frozen Parameters", f"{arch.frozen_params:,}"),
        ("Bytes on disk", f"{clone.bytes_on_disk:,}"),
    ]:
        report(f"  - {label}: {value}")


def _step(number: int, name: str, report: Report, check: Callable[[], object], done: str) -> None:
    report("")
    report(f"Step {number}: {name}...")
    try:
        check()
    except CloningCheckFailed:
        raise
    except Exception as exc:  # every failure, whatever its type, is reported as this step's
        raise CloningCheckFailed(number, name, exc) from exc
    report(f"✓ {done}")


def _main_exists(registry: ModelRegistry, store: ModelStore, state: _State) -> None:
    active = registry.get_active_version()
    if active is None:
        raise MainModelMissing()
    load_main_model(store.main_root, active.version)  # verifies manifest and hashes
    state.version = active.version


def _clone(store: ModelStore, learner_id: str, state: _State) -> None:
    state.clone = clone_for_learner(store.main_root, store.learners_root, learner_id, state.version)


def _frozen_split(store: ModelStore, learner_id: str) -> None:
    model, _ = load_learner_model(store.main_root, store.learners_root, learner_id)
    wrong = [name for name, p in model.named_parameters() if p.requires_grad != is_personal(model, name)]
    if wrong:
        raise RuntimeError(f"parameters with the wrong frozen/trainable state: {wrong}")
    stored = stored_tensor_names(store.learners_root, learner_id)  # verified reads
    if any(not is_personal(model, name) for name in stored):
        raise RuntimeError("the clone stores frozen weights")


def _same_weights(store: ModelStore, learner_id: str, state: _State) -> None:
    main, _ = load_main_model(store.main_root, state.version)
    clone, _ = load_learner_model(store.main_root, store.learners_root, learner_id)
    main_state, clone_state = main.state_dict(), clone.state_dict()
    different = [k for k in main_state if not torch.equal(main_state[k], clone_state[k])]
    if different:
        raise RuntimeError(f"weights differ from the main model: {different}")


def _zero_delta(store: ModelStore, learner_id: str) -> None:
    delta = weight_delta(store.main_root, store.learners_root, learner_id)
    norm = delta_norm(delta)
    if norm != 0.0:
        raise RuntimeError(f"delta right after cloning has L2 norm {norm}, expected 0")


def _register(registry: ModelRegistry, learner_id: str, state: _State) -> None:
    assert state.clone is not None
    registry.register_personalized_model(learner_id, personalized_model_metadata(state.clone))
    record = registry.get_personalized_model(learner_id)
    if record is None or record.metadata.get("federatedLearning") is not True:
        raise RuntimeError("the registered PersonalizedModel was not read back")
