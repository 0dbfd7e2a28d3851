"""The printed training summary agrees with the kept epoch's line, as in the activation guide."""

from __future__ import annotations

from aivo_fl.ml.simulation.world import generate_curriculum
from aivo_fl.ml.training.main_model import (
    TrainingConfig,
    format_epoch,
    format_kept_epoch,
    format_training_results,
    train_model,
)


def test_final_loss_and_accuracy_are_the_kept_epochs() -> None:
    lines: list[str] = []
    _, result = train_model(
        generate_curriculum(600, seed=3),
        TrainingConfig(epochs=3, batch_size=64, seed=3, log_every=1),
        callback=lambda s: lines.append(format_epoch(s)),
    )
    assert lines[-1].startswith("Epoch 3/3")  # "Epoch 3/3 - Loss: 0.8234, Accuracy: 0.7145"
    kept = format_kept_epoch(result)  # "Kept epoch 2/3 - Loss: ..., Accuracy: ... (lowest validation loss)"
    assert kept.startswith(f"Kept epoch {result.best_epoch}/3 - ")
    # The kept epoch's own line carries the same loss and accuracy (the weights kept are the ones evaluated).
    assert lines[result.best_epoch - 1].split(" - ")[1] == kept.split(" - ")[1].split(" (")[0]
    loss, accuracy = (float(part.split(": ")[1]) for part in kept.split(" - ")[1].split(" (")[0].split(", "))
    summary = format_training_results(result)
    assert f"  - Final Loss: {loss:.4f}" in summary
    assert f"  - Final Accuracy: {accuracy * 100:.2f}%" in summary
