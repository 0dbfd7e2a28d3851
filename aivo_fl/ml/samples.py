"""What the model reads and predicts: 256 features, one label per head, as arrays.

`Samples` carries the labels observed and, for simulated data, the Bayes-optimal ones (real
interactions have none).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NUM_FEATURES = 256


HEAD_CLASSES: dict[str, int] = {"difficulty": 5, "modality": 4, "success": 2}


PRIMARY_HEAD = "difficulty"


@dataclass(frozen=True)
class Samples:
    features: np.ndarray  # (n, 256) float32
    targets: dict[str, np.ndarray]  # head -> (n,) int64 observed (noisy) labels
    bayes_labels: dict[str, np.ndarray]  # head -> (n,) int64 teacher argmax

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def subset(self, index: np.ndarray) -> Samples:
        return Samples(
            features=self.features[index],
            targets={h: t[index] for h, t in self.targets.items()},
            bayes_labels={h: b[index] for h, b in self.bayes_labels.items()},
        )


@dataclass(frozen=True)
class LearnerData:
    learner_id: str
    train: Samples
    heldout: Samples


def check_fraction(name: str, value: float) -> None:
    """Refuse a split fraction outside (0, 1): one side of the split would be empty."""
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {value}")


def bayes_ceiling(samples: Samples) -> dict[str, float]:
    """Accuracy of the Bayes-optimal predictions on exactly these samples."""
    if len(samples) == 0:
        return {h: float("nan") for h in HEAD_CLASSES}
    return {h: float(np.mean(samples.targets[h] == samples.bayes_labels[h])) for h in HEAD_CLASSES}
