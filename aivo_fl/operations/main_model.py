"""Build the curriculum dataset, train the main model, store it and register it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aivo_fl.ml.model import (
    DEFAULT_PERSONALIZATION_DEPTH,
    ArchitectureSummary,
    architecture_summary,
    build_model,
    frozen_layers_for,
)
from aivo_fl.ml.samples import HEAD_CLASSES, Samples, bayes_ceiling
from aivo_fl.ml.simulation.world import generate_curriculum
from aivo_fl.ml.store.artifacts import save_main_model
from aivo_fl.ml.training.main_model import (
    TrainingConfig,
    TrainingResult,
    format_epoch,
    format_kept_epoch,
    format_training_results,
    train_model,
)
from aivo_fl.operations.recovery import clean_store, reclaim_unregistered_version
from aivo_fl.operations.store import ModelStore, load_samples, save_samples
from aivo_fl.operations.versions import next_free_version
from aivo_fl.registry import ModelRegistry

Report = Callable[[str], None]

FIRST_VERSION = "1.0.0"


@dataclass(frozen=True)
class DatasetSummary:
    path: Path
    rows: int
    seed: int
    class_balance: dict[str, list[float]]
    bayes_ceiling: dict[str, float]


def build_curriculum_dataset(store: ModelStore, n_samples: int, seed: int, report: Report = print) -> DatasetSummary:
    """Generate (or reuse: it is a pure function of size and seed) the curriculum dataset."""
    path = store.curriculum_path(n_samples, seed)
    report(f"Generating {n_samples:,} curriculum data samples...")
    samples = generate_curriculum(n_samples, seed)
    save_samples(path, samples)
    report(f"✓ Generated {len(samples):,} samples")
    balance = {
        head: [float((samples.targets[head] == k).mean()) for k in range(classes)]
        for head, classes in HEAD_CLASSES.items()
    }
    return DatasetSummary(path, len(samples), seed, balance, bayes_ceiling(samples))


def _version_to_train(registry: ModelRegistry, store: ModelStore, active: str | None, report: Report) -> str:
    """The first model is 1.0.0 even after a crash left an unregistered 1.0.0 folder behind."""
    if active is not None:
        return next_free_version(registry, store, active, "major")
    registered = [v.version for v in registry.list_main_versions()]
    if FIRST_VERSION not in registered:
        reclaim_unregistered_version(registry, store, FIRST_VERSION, report)
        return FIRST_VERSION
    return next_free_version(registry, store, FIRST_VERSION, "major")


@dataclass(frozen=True)
class MainModelOutcome:
    version: str
    path: Path
    result: TrainingResult
    architecture: ArchitectureSummary

    def metrics(self) -> dict[str, Any]:
        r = self.result
        return {
            "finalLoss": r.final_loss,
            "finalAccuracy": r.final_accuracy,
            "validationLoss": r.val_loss,
            "validationAccuracy": r.val_accuracy,
            "testLoss": r.test_loss,
            "testAccuracy": r.test_accuracy,
            "bayesCeiling": r.bayes_ceiling,  # on the test split, like testAccuracy
            "perHead": r.per_head,  # test split
            "epochs": r.epochs,
            "epochsRun": r.epochs_run,
            "bestEpoch": r.best_epoch,
            "batchSize": r.batch_size,
            "seconds": r.seconds,
        }


def train_and_register_main_model(
    registry: ModelRegistry,
    store: ModelStore,
    dataset_path: Path,
    config: TrainingConfig,
    personalization_depth: str = DEFAULT_PERSONALIZATION_DEPTH,
    report: Report = print,
) -> MainModelOutcome:
    """Train on the stored dataset, write the version atomically, then register it as active.

    ``config.seed`` seeds the model's initialisation and is recorded as the version's data seed.
    The first model is 1.0.0; a retrain from scratch takes the next major version (aggregation
    rounds take minor versions), so the two kinds of change are told apart at a glance.
    """
    samples: Samples = load_samples(dataset_path)
    clean_store(store, report)
    report("Initializing MainModelTrainer...")
    report("✓ Trainer initialized")
    report("")
    report("Training model...")
    model = build_model(config.seed, frozen_layers_for(personalization_depth))
    model, result = train_model(samples, config, model, callback=lambda stats: report(format_epoch(stats)))
    active = registry.get_active_version()
    version = _version_to_train(registry, store, active.version if active else None, report)
    outcome = MainModelOutcome(version, store.main_root / version, result, architecture_summary(model))
    report(format_kept_epoch(result))
    report("")
    for line in format_training_results(result).splitlines():
        report(line)
    report("")
    report("Saving model...")
    path = save_main_model(
        store.main_root,
        version,
        model,
        metrics=outcome.metrics(),
        data_seed=config.seed,
        parent_version=active.version if active else None,
    )
    report(f"✓ Model saved to {path}")
    report("")
    report("Registering in ModelRegistry...")
    registry.register_main_version(
        version,
        str(path),
        {
            **outcome.metrics(),
            "architecture": asdict(outcome.architecture),
            "dataSeed": config.seed,
            "curriculumPath": str(dataset_path),
            # The splits the model was selected and judged on: rounds guard on the same validation
            # split and anchor on the same training split (`operations.aggregation.curriculum_splits`).
            "validationFraction": config.val_fraction,
            "testFraction": config.test_fraction,
        },
        parent_version=active.version if active else None,
    )
    report(f"✓ Registered version {version}")
    return outcome
