"""The printed training summary agrees with the last epoch line, as in the activation guide."""

from __future__ import annotations

from aivo_fl.ml.simulation.world import generate_curriculum
from aivo_fl.ml.training.main_model import TrainingConfig, format_epoch, format_training_results, train_model


def test_final_loss_and_accuracy_are_the_last_epochs() -> None:
    lines: list[str] = []
    _, result = train_model(
        generate_curriculum(600, seed=3),
        TrainingConfig(epochs=3, batch_size=64, seed=3),
        callback=lambda s: lines.append(format_epoch(s)),
    )
    last = lines[-1]  # "Epoch 3/3 - Loss: 0.8234, Accuracy: 0.7145"
    assert last.startswith("Epoch 3/3")
    loss, accuracy = (float(part.split(": ")[1]) for part in last.split(" - ")[1].split(", "))
    summary = format_training_results(result)
    assert f"  - Final Loss: {loss:.4f}" in summary
    assert f"  - Final Accuracy: {accuracy * 100:.2f}%" in summary
