"""Main-model training keeps the epoch with the lowest validation loss, stops when validation stops
improving, and is judged on a test split that never selects anything."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aivo_fl.ml.model import evaluate, mean_loss
from aivo_fl.ml.samples import PRIMARY_HEAD, Samples
from aivo_fl.ml.simulation.world import generate_curriculum
from aivo_fl.ml.training.main_model import TrainingConfig, TrainingDiverged, split_curriculum, train_model

# Small and without regularization, so validation turns around early and training stops.
OVERFITTING = TrainingConfig(
    epochs=200, batch_size=32, input_weight_decay=0.0, average_fraction=0, patience=5, log_every=1, seed=1
)


def _rows(samples: Samples) -> list[bytes]:
    return [row.tobytes() for row in samples.features]


def test_the_splits_are_disjoint_cover_everything_and_are_seeded() -> None:
    samples = generate_curriculum(1_000, seed=4)
    splits = split_curriculum(samples, 0.15, 0.15, seed=4)
    parts = [_rows(splits.train), _rows(splits.validation), _rows(splits.test)]
    assert [len(p) for p in parts] == [700, 150, 150]
    assert sorted(parts[0] + parts[1] + parts[2]) == sorted(_rows(samples))
    assert split_curriculum(samples, 0.15, 0.15, seed=4).test.features.tobytes() == splits.test.features.tobytes()
    assert split_curriculum(samples, 0.15, 0.15, seed=5).test.features.tobytes() != splits.test.features.tobytes()
    # A version registered without a test fraction keeps its two-way split: validation is the same
    # samples, and the test samples simply stay in training.
    two_way = split_curriculum(samples, 0.15, 0.0, seed=4)
    assert _rows(two_way.validation) == _rows(splits.validation) and len(two_way.test) == 0
    assert sorted(_rows(two_way.train)) == sorted(parts[0] + parts[2])


def test_training_stops_when_validation_stops_improving_and_keeps_the_best_epoch() -> None:
    samples = generate_curriculum(500, seed=1)
    model, result = train_model(samples, OVERFITTING)
    val_losses = {h.epoch: h.val_loss for h in result.history}  # log_every=1: every epoch
    assert result.epochs_run < OVERFITTING.epochs  # it stopped early...
    assert result.epochs_run == result.best_epoch + OVERFITTING.patience  # ...`patience` epochs after the best
    assert result.best_epoch == min(val_losses, key=val_losses.get)
    assert val_losses[result.epochs_run] > val_losses[result.best_epoch]
    # The model returned is the kept epoch's, not the last one's.
    validation = split_curriculum(samples, OVERFITTING.val_fraction, OVERFITTING.test_fraction, 1).validation
    assert mean_loss(evaluate(model, validation)) == pytest.approx(val_losses[result.best_epoch], abs=1e-5)
    assert result.val_loss == pytest.approx(val_losses[result.best_epoch], abs=1e-5)
    assert result.final_loss == next(h.loss for h in result.history if h.epoch == result.best_epoch)


def test_the_test_split_selects_nothing() -> None:
    """Scrambling the test split's labels changes the test accuracy and nothing else."""
    samples = generate_curriculum(500, seed=1)
    test_rows = set(_rows(split_curriculum(samples, 0.15, 0.15, seed=1).test))
    in_test = np.array([row in test_rows for row in _rows(samples)])
    scrambled = Samples(
        samples.features,
        {h: np.where(in_test, np.roll(t, 1), t) for h, t in samples.targets.items()},
        samples.bayes_labels,
    )
    config = TrainingConfig(epochs=40, batch_size=32, patience=5, seed=1)
    a, result_a = train_model(samples, config)
    b, result_b = train_model(scrambled, config)
    assert (result_a.best_epoch, result_a.epochs_run) == (result_b.best_epoch, result_b.epochs_run)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert result_a.val_accuracy == result_b.val_accuracy
    assert result_a.test_accuracy != result_b.test_accuracy


def test_training_that_never_reaches_a_finite_validation_loss_is_refused() -> None:
    samples = generate_curriculum(200, seed=0)
    samples.features[:, 0] = np.nan  # every prediction is NaN
    with pytest.raises(TrainingDiverged, match="finite validation loss"):
        train_model(samples, TrainingConfig(epochs=3, log_every=1))


def test_weight_averaging_is_what_gets_evaluated_and_kept() -> None:
    samples = generate_curriculum(600, seed=2)
    averaged, result = train_model(samples, TrainingConfig(epochs=6, patience=10, seed=2))
    raw, raw_result = train_model(samples, TrainingConfig(epochs=6, patience=10, seed=2, average_fraction=0))
    # Same steps, different weights kept: the average of the trajectory, not its last point.
    assert not torch.equal(averaged.trunk[0].weight, raw.trunk[0].weight)
    assert result.history[0].loss == raw_result.history[0].loss  # the training itself is identical
    assert result.val_accuracy > 0.3 and result.per_head[PRIMARY_HEAD]["accuracy"] > 0.3


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"patience": 0}, "patience"),
        ({"average_fraction": -0.1}, "average_fraction"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "test_fraction"),
    ],
)
def test_a_config_that_cannot_train_is_refused(overrides: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainingConfig(**overrides)
